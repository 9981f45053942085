"""A stand-in for DNAnexus's ``dx`` command over a local folder acting as the project (tests only).

It implements the calls mimir makes (``mimir.batch.dx``, the applet's entry
script, the launcher): ``mkdir -p``, ``upload LOCAL --path P --brief``,
``find data --path FOLDER [--norecurse] --name GLOB --json``, ``download ID|PATH
-o LOCAL -f``, ``rm ID...`` and ``run ...`` (recorded, not run). The project
is ``$FAKE_DX_PROJECT``: ``objects/<file-id>`` holds the bytes and
``index.json`` each file's name, folder, size and creation time, as
``dx find data --json`` describes them. ``FAKE_DX_KILL_AFTER_CHECKPOINTS=K``
kills the calling job's process group (SIGKILL, as a lost spot instance)
at its K-th checkpoint upload, before that upload is stored: the project
keeps the checkpoint before it (with K=2, the first, saved while the batch
had made its first records, however fast the rest then ran).
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(os.environ["FAKE_DX_PROJECT"])
INDEX = ROOT / "index.json"


def _index() -> dict:
    return json.loads(INDEX.read_text()) if INDEX.exists() else {}


def _save(index: dict) -> None:
    tmp = INDEX.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, INDEX)


def _path(text: str) -> str:
    return "/" + text.rpartition(":")[2].strip("/")


def _id(text: str) -> str:
    if text.startswith("{"):
        text = json.loads(text)["$dnanexus_link"]
    return text.rpartition(":")[2] if ":file-" in text else text


def main(argv: list[str]) -> int:
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "objects").mkdir(exist_ok=True)
    cmd, args = argv[0], argv[1:]
    index = _index()
    if cmd == "mkdir":
        return 0
    if cmd == "upload":
        local, dest = args[0], _path(args[args.index("--path") + 1])
        kill_at = int(os.environ.get("FAKE_DX_KILL_AFTER_CHECKPOINTS", "0") or 0)
        if kill_at and dest.endswith(".checkpoint.tar.gz"):
            count = ROOT / "checkpoint_uploads"
            n = int(count.read_text()) + 1 if count.exists() else 1
            count.write_text(str(n))
            if n == kill_at:
                sys.stdout.flush()
                os.killpg(os.getpgrp(), signal.SIGKILL)
        fid = "file-" + secrets.token_hex(12)
        shutil.copyfile(local, ROOT / "objects" / fid)
        folder, _, name = dest.rpartition("/")
        index[fid] = {"name": name, "folder": folder or "/", "size": os.path.getsize(local),
                      "created": time.time_ns() // 1000}
        _save(index)
        print(fid)
        return 0
    if cmd == "find" and args[0] == "data":
        folder = _path(args[args.index("--path") + 1])
        pattern = args[args.index("--name") + 1] if "--name" in args else "*"
        recurse = "--norecurse" not in args
        out = []
        for fid, d in index.items():
            inside = d["folder"] == folder or (recurse and d["folder"].startswith(folder.rstrip("/") + "/"))
            if inside and fnmatch.fnmatchcase(d["name"], pattern):
                out.append({"project": "project-fake", "id": fid, "describe": {"id": fid, **d}})
        print(json.dumps(out))
        return 0
    if cmd == "download":
        target, local = args[0], args[args.index("-o") + 1]
        fid = _id(target)
        if fid not in index:
            path = _path(target)
            fid = next((k for k, d in index.items() if f"{d['folder'].rstrip('/')}/{d['name']}" == path), "")
        if not fid:
            print(f"dxpy.exceptions.ResolutionError: no file {target}", file=sys.stderr)
            return 3
        shutil.copyfile(ROOT / "objects" / fid, local)
        return 0
    if cmd == "rm":
        for fid in args:
            index.pop(fid, None)
            (ROOT / "objects" / fid).unlink(missing_ok=True)
        _save(index)
        return 0
    if cmd == "run":
        with open(ROOT / "runs.jsonl", "a") as fh:
            fh.write(json.dumps(args) + "\n")
        print("job-" + secrets.token_hex(12))
        return 0
    print(f"fake dx: unsupported command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
