"""One shard as one DNAnexus job: restore, run ``mimir batch`` with checkpoints, pack, upload.

What the applet's entry script (``deploy/ukb-rap/src/mimir_shard.sh``) runs,
as ``mimir rap run-shard``:

1. **Restore.** If the project folder holds ``shard-<i>-of-<N>.checkpoint.tar.gz``
   (a previous instance of this job got that far), download it and unpack its
   records into the local output folder.
2. **Run** ``mimir batch LISTING -o OUT --num-shards N --shard-index i ...``
   in a child process, saving a checkpoint (one file, replacing the previous
   one) every ``every_s`` seconds or ``every_n`` new subjects, and once more
   when the batch ends or is stopped (SIGTERM).
3. **Pack and upload** ``shard-<i>-of-<N>.tar.gz`` (:func:`mimir.batch.shards.pack`),
   then remove the checkpoint: two files per shard at most ever live in the
   project, and one at the end. A job whose archive is already in the
   folder does nothing (a restart after the upload, or a plan submitted
   again: only unfinished shards run). A checkpoint that cannot be saved
   is a warning; the run goes on and the next save tries again.

A shard in which some subjects failed is a finished shard (their rows are in
errors.csv): the job succeeds. It fails (exit 1) only when the batch could
not run; the restart policy then starts it again, from the checkpoint.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mimir.batch import dx
from mimir.batch.checkpoint import Checkpointer, restore_records
from mimir.batch.shards import pack
from mimir.errors import EXIT_OK, EXIT_PARTIAL, MimirError

#: Seconds between looks at the records while the batch runs.
POLL_S = 0.5


def shard_name(index: int, count: int) -> str:
    """``shard-0003-of-0016``: the stem of a shard's files in the project."""
    return f"shard-{index:04d}-of-{count:04d}"


@dataclass
class ShardResult:
    """What the job did: records restored, checkpoints saved, the batch's exit code, the archive's file id."""

    restored: int
    checkpoints: int
    batch_exit: int
    archive_id: str | None
    exit_code: int


def run_shard(
    listing: str, folder: str, *, shard_index: int, num_shards: int, work_dir: str,
    batch_args: Sequence[str] = (), every_s: float = 600.0, every_n: int = 500, report: bool = False,
    log: Any = None,
) -> ShardResult:
    """Run shard ``shard_index`` of ``num_shards`` of ``listing``; upload its outputs to the project ``folder``."""
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    stem = shard_name(shard_index, num_shards)
    work = Path(work_dir)
    out = work / stem
    out.mkdir(parents=True, exist_ok=True)
    ckpt_name = f"{stem}.checkpoint.tar.gz"

    done = dx.find(folder, f"{stem}.tar.gz")
    if done:  # a finished shard (the job restarted after its upload, or the plan was submitted again)
        say(f"{stem}: already done ({done[0].id}); nothing to do")
        return ShardResult(0, 0, EXIT_OK, done[0].id, EXIT_OK)

    restored = 0
    found = dx.find(folder, ckpt_name)
    if found:
        local = work / "restored.checkpoint.tar.gz"
        dx.download(found[0].id, str(local))
        restored = restore_records(local, out)
        local.unlink()
        say(f"{stem}: restored {restored} subject record(s) from the checkpoint {found[0].id}")

    checkpointer = Checkpointer(
        out, work / ckpt_name, lambda path: dx.replace(path, folder, ckpt_name), every_s=every_s, every_n=every_n
    )
    cmd = [sys.executable, "-m", "mimir", "batch", listing, "-o", str(out), "--num-shards", str(num_shards),
           "--shard-index", str(shard_index), *batch_args]
    if report:
        cmd.append("--report")
    say(f"{stem}: {' '.join(cmd[2:])}")
    child = subprocess.Popen(cmd)  # noqa: S603 - our own interpreter, arguments as a list

    def stop(signum: int, frame: Any) -> None:
        child.send_signal(signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, stop) if _main_thread() else None
    try:
        while child.poll() is None:
            time.sleep(POLL_S)
            try:
                if checkpointer.maybe_save():
                    say(f"{stem}: checkpoint saved ({checkpointer.saved_count} subject record(s))")
            except (MimirError, OSError) as exc:  # the run goes on; the next save tries again
                checkpointer.saved_at = checkpointer.clock()
                say(f"{stem}: warning: the checkpoint could not be saved ({exc}); trying again later")
        code = child.returncode
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    checkpointer.save()  # whatever happened, the records made so far survive this instance
    if code not in (EXIT_OK, EXIT_PARTIAL):
        raise MimirError(
            f"{stem}: mimir batch exited with {code}; the records are in the checkpoint, and a restart resumes"
        )
    archive = work / f"{stem}.tar.gz"
    pack(out, archive, report=report)
    archive_id = dx.replace(str(archive), folder, archive.name)
    dx.remove([f.id for f in dx.find(folder, ckpt_name)])
    say(f"{stem}: uploaded {archive.name} ({archive_id}); exit code of mimir batch {code}")
    return ShardResult(restored, checkpointer.saves, code, archive_id, EXIT_OK)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
