"""Planning and submitting the shards of a RAP run: shard sizes, instance hours, ``dx run`` commands.

The estimate uses this project's own measured figures (README "Performance",
2026-11-28, quiet 2-core VM, full-size synthetic subjects; no GPU and no
dxfuse mount could be measured):

- preprocessing: :data:`PREPROCESS_PER_CORE_S` subjects per second per core
  (two ``mimir batch`` workers on two cores, 3.54 subjects/s);
- CPU inference of a full-width ResNet50: :data:`CPU_INFERENCE_PER_CORE_S`
  images per second per core per ensemble member (11.6 images/s on two cores).

On a GPU instance inference is taken as free and one core is left to it, so
the rate is preprocessing on the other cores: an assumption until a GPU
figure exists. Reading through dxfuse was not measured; time a first shard
and pass its rate with ``subjects_per_hour``. The price per instance hour is
always the user's input; nothing here knows a price.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field

from mimir.batch.dx import split_folder
from mimir.batch.inputs import shard_of
from mimir.batch.rap import discover_inputs
from mimir.batch.rap_job import shard_name
from mimir.errors import UsageError

#: Subjects per second per CPU core, preprocessing (README Batch table, 2 workers: 3.539 / 2).
PREPROCESS_PER_CORE_S = 3.539 / 2
#: Images per second per CPU core per network, full-width ResNet50 fp32 (README: 11.6 images/s on 2 cores).
CPU_INFERENCE_PER_CORE_S = 11.6 / 2
#: Minutes from ``dx run`` to a running job (instance boot; the figure UK Biobank users report).
BOOT_MIN = 3.0
PRIORITIES = ("low", "normal", "high")


@dataclass(frozen=True)
class Instance:
    """What the plan needs of an instance type: cores and whether it has a GPU (from its name)."""

    name: str
    cores: int
    gpu: bool


def parse_instance(name: str) -> Instance:
    """``mem3_ssd1_gpu_x8`` -> 8 cores, GPU; ``mem1_ssd1_v2_x16`` -> 16 cores, no GPU."""
    m = re.fullmatch(r"(?:azure:)?mem\d_(?:ssd|hdd)\d(?:_gpu\d?)?(?:_v\d)?_x(\d+)", name)
    if not m:
        raise UsageError(
            f"{name!r} is not a DNAnexus instance type name", hint="e.g. mem1_ssd1_v2_x16 (CPU) or mem3_ssd1_gpu_x8 (GPU)."
        )
    return Instance(name, int(m.group(1)), "_gpu" in name)


def subjects_per_hour(instance: Instance, members: int = 1) -> float:
    """Estimated subjects per hour on ``instance`` for a module of ``members`` networks (see module docstring)."""
    if instance.gpu:
        return max(1, instance.cores - 1) * PREPROCESS_PER_CORE_S * 3600
    core_s = 1 / PREPROCESS_PER_CORE_S + members / CPU_INFERENCE_PER_CORE_S
    return instance.cores / core_s * 3600


@dataclass
class Plan:
    """Shards, their sizes, the estimate and the ``dx run`` commands."""

    subjects: int
    num_shards: int
    per_shard: list[int]
    rate_per_hour: float
    rate_source: str
    instance: Instance
    hours_per_shard: list[float]
    instance_hours: float
    price_per_hour: float | None
    commands: list[list[str]] = field(default_factory=list)

    @property
    def cost(self) -> float | None:
        """Instance hours times the user's price (None without a price)."""
        return None if self.price_per_hour is None else self.instance_hours * self.price_per_hour

    def lines(self) -> list[str]:
        """The plan as text: one line per figure, then the shards, then the commands."""
        out = [
            f"subjects: {self.subjects}; shards: {self.num_shards}; instance type: {self.instance.name} "
            f"({self.instance.cores} cores{', GPU' if self.instance.gpu else ''})",
            f"rate: {self.rate_per_hour:.0f} subjects/hour per instance ({self.rate_source})",
            f"estimated instance hours: {self.instance_hours:.1f} (boot {BOOT_MIN:g} min per job included; "
            f"longest shard {max(self.hours_per_shard, default=0):.2f} h)",
        ]
        if self.cost is not None:
            out.append(f"estimated cost: {self.cost:.2f} at your price of {self.price_per_hour:g} per instance hour")
        out.append("shard  subjects  hours")
        out += [f"{i:5d}  {n:8d}  {h:5.2f}" for i, (n, h) in enumerate(zip(self.per_shard, self.hours_per_shard))]
        out += [shlex.join(c) for c in self.commands]
        return out


def plan(
    listing: str, *, instance_type: str, target_hours: float = 4.0, num_shards: int | None = None,
    instance: int | None = None, members: int = 1, rate: float | None = None, price_per_hour: float | None = None,
) -> Plan:
    """Split ``listing`` into shards of about ``target_hours`` each on ``instance_type``; estimate hours (and cost)."""
    if target_hours <= 0:
        raise UsageError(f"--target-hours must be positive, got {target_hours}")
    if price_per_hour is not None and price_per_hour < 0:
        raise UsageError(f"--price-per-hour must not be negative, got {price_per_hour}")
    inst = parse_instance(instance_type)
    inputs, _ = discover_inputs(listing, instance=instance)
    names = inputs.names
    if rate is not None:
        if rate <= 0:
            raise UsageError(f"--subjects-per-hour must be positive, got {rate}")
        per_hour, source = rate, "your --subjects-per-hour"
    else:
        per_hour = subjects_per_hour(inst, members)
        source = ("measured preprocessing rate on the other cores; GPU inference not measured" if inst.gpu
                  else f"measured CPU rates, {members} network(s) per module")
        source += "; dxfuse reads not measured: time a first shard"
    n = num_shards or max(1, math.ceil(len(names) / (per_hour * target_hours)))
    counts = Counter(shard_of(name, n) for name in names)
    per_shard = [counts.get(i, 0) for i in range(n)]
    hours = [c / per_hour + BOOT_MIN / 60 for c in per_shard]
    return Plan(len(names), n, per_shard, per_hour, source, inst, hours, sum(hours), price_per_hour)


def dx_run_commands(
    p: Plan, *, applet: str, listing_file: str, modules_file: str, folder: str, priority: str = "low",
    cost_limit: float | None = None, restarts: int = 3, spot_tries: int = 5, instance: int | None = None,
    module_names: list[str] | None = None, extra_batch_args: str = "",
) -> list[list[str]]:
    """One ``dx run`` command per shard (arguments as lists; :meth:`Plan.lines` prints them shell-quoted)."""
    if priority not in PRIORITIES:
        raise UsageError(f"--priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    if cost_limit is None and p.price_per_hour is not None:
        cost_limit = round(2 * max(p.hours_per_shard) * p.price_per_hour + 0.005, 2)  # twice the longest shard
    policy = {"executionPolicy": {"restartOn": {"UnresponsiveWorker": restarts, "JMInternalError": restarts,
                                                "ExecutionError": restarts}, "maxSpotTries": spot_tries}}
    prefix, path = split_folder(folder)
    # The applet puts its job's project in front of output_folder: the folder goes in bare, the project (if
    # named) with --project, which makes it the job's project.
    project = ["--project", prefix[:-1]] if prefix.rstrip(":") else []
    commands = []
    for i in range(p.num_shards):
        cmd = [
            "dx", "run", applet, *project, f"-ilisting={listing_file}", f"-imodules={modules_file}",
            f"-inum_shards={p.num_shards}", f"-ishard_index={i}", f"-ioutput_folder={path}",
            "--instance-type", p.instance.name, "--priority", priority,
            "--name", f"mimir-{shard_name(i, p.num_shards)}", "--extra-args", json.dumps(policy, separators=(",", ":")),
        ]
        if instance is not None:
            cmd.append(f"-iinstance={instance}")
        for m in module_names or []:
            cmd.append(f"-imodule={m}")
        if extra_batch_args:
            cmd.append(f"-ibatch_args={extra_batch_args}")
        if cost_limit is not None:
            cmd += ["--cost-limit", f"{cost_limit:g}"]
        cmd += ["-y", "--brief"]
        commands.append(cmd)
    p.commands = commands
    return commands
