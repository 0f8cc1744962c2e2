"""Run one training command and measure it from outside, the same way for kubeclip and open_clip_train.

Who uses it: ``hack/bench_trainer.py`` and ``hack/bench_gpu.py``.

:func:`run` starts the command and, until it exits, samples (every 0.25 s)
  * the process tree (the command and every descendant: ranks, loader workers): peak summed
    RSS and PSS (PSS splits pages shared after fork, so it does not double-count them);
  * every 50 ms, the new part of the log file for a marker line (a trainer's first step),
    giving time to first step;
  * with ``gpu=True``, the GPU's used memory (``nvidia-smi``; device-wide, minus what was used
    before the start: the run's footprint including its CUDA context and allocator cache).
It returns those with the wall time, the largest single process's peak RSS (its ``VmHWM``, the
figure ``/usr/bin/time -v`` reports, sampled while it runs: a process living under 0.25 s
can be missed) and the CPU seconds of the whole tree (``getrusage`` of waited-for children).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(pid))
    return kids


def _field_kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_memory_kb(root: int) -> tuple[int, int, int]:
    """(summed RSS, summed PSS, largest single peak RSS) of ``root`` and its descendants, in KiB."""
    kids, stack, rss, pss, hwm = _children(), [root], 0, 0, 0
    while stack:
        pid = stack.pop()
        rss += _field_kb(f"/proc/{pid}/status", "VmRSS:")
        hwm = max(hwm, _field_kb(f"/proc/{pid}/status", "VmHWM:"))  # the kernel's own peak of that process
        pss += _field_kb(f"/proc/{pid}/smaps_rollup", "Pss:")
        stack.extend(kids.get(pid, []))
    return rss, pss, hwm


def tree_anon_pss_kb(root: int, also: tuple[str, ...] = ()) -> int:
    """PSS of ``root``'s tree counting only anonymous mappings (heap, stacks, copied-on-write pages)
    and files under the ``also`` prefixes (a memory-mapped dataset). Shared libraries are left
    out: their PSS is split among every process of the machine that maps them (other torch
    processes on a shared machine), which swings the whole-tree figure by hundreds of MB."""
    kids, stack, total = _children(), [root], 0
    while stack:
        pid = stack.pop()
        stack.extend(kids.get(pid, []))
        counted = False
        try:
            with open(f"/proc/{pid}/smaps") as f:
                for line in f:
                    head = line.split(maxsplit=5)
                    if "-" in head[0] and not head[0].endswith(":"):
                        name = head[5].strip() if len(head) > 5 else ""
                        counted = not name or name.startswith("[") or (bool(also) and name.startswith(also))
                    elif counted and head[0] == "Pss:":
                        total += int(head[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and every descendant (found before any of them dies)."""
    kids, stack, found = _children(), [root], []
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(kids.get(pid, []))
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def gpu_used_mib() -> int | None:
    """Used memory of GPU 0 in MiB per ``nvidia-smi``, or None without one."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return int(out.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def run(
    cmd: list,
    cwd: Path,
    log_path: Path,
    env: dict | None = None,
    marker: str = "",
    marker_file: Path | None = None,
    gpu: bool = False,
    timeout: float | None = None,
    stop_after_marker_s: float | None = None,
    stop_marker: str | None = None,
    anon_pss_also: tuple[str, ...] | None = None,
) -> dict:
    """Run ``cmd`` (stdout+stderr to ``log_path``); raise SystemExit with the log's tail if it fails.

    ``timeout``: seconds after which the command's whole process group is killed (a failure).
    ``stop_after_marker_s``: kill the whole process tree (torchrun's workers live in sessions of
    their own) this many seconds after ``stop_marker`` (default: ``marker``) appeared in the log: a
    run measured up to its first steps.
    ``anon_pss_also``: also report ``peak_tree_anon_pss_mb`` (:func:`tree_anon_pss_kb` with these
    file prefixes), sampled every 0.5 s.
    """
    cmd = [str(c) for c in cmd]
    marker_file = Path(marker_file or log_path)
    gpu_base = gpu_used_mib() if gpu else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = {"rss": 0, "pss": 0, "hwm": 0, "gpu": 0, "anon": 0}
    first: float | None = None
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        done = threading.Event()

        def sample_gpu() -> None:  # nvidia-smi takes ~50 ms: its own thread, 4 samples a second
            while not done.is_set():
                used = gpu_used_mib()
                if used is not None:
                    peak["gpu"] = max(peak["gpu"], used)
                done.wait(0.25)

        sampler = threading.Thread(target=sample_gpu, daemon=True) if gpu_base is not None else None
        if sampler:
            sampler.start()
        seen, tick = 0, 0  # bytes of the marker file already searched; polls so far
        stopped = False
        stop_seen: float | None = None
        while proc.poll() is None:
            if stop_after_marker_s is not None and stop_seen is None and first is not None:
                if not stop_marker:
                    stop_seen = first
                elif tick % 5 == 0 and stop_marker.encode() in Path(marker_file).read_bytes():
                    stop_seen = time.time() - t0
            if (
                stop_after_marker_s is not None
                and stop_seen is not None
                and time.time() - t0 > stop_seen + stop_after_marker_s
            ):
                kill_tree(proc.pid)
                proc.wait()
                stopped = True
                break
            if timeout and time.time() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            if tick % 5 == 0:  # the process tree every 0.25 s: walking /proc costs CPU the trainers need
                rss, pss, hwm = tree_memory_kb(proc.pid)
                peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
                peak["hwm"] = max(peak["hwm"], hwm)
            if anon_pss_also is not None and tick % 10 == 0:
                peak["anon"] = max(peak["anon"], tree_anon_pss_kb(proc.pid, anon_pss_also))
            if marker and first is None and marker_file.exists():
                try:  # only the new part of the log, with an overlap for a marker cut in two
                    start = max(0, seen - len(marker))
                    with open(marker_file, "rb") as f:
                        f.seek(start)
                        chunk = f.read()
                    if marker.encode() in chunk:
                        first = time.time() - t0
                    seen = start + len(chunk)
                except OSError:
                    pass
            tick += 1
            time.sleep(0.05)
        done.set()
        if sampler:
            sampler.join()
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 and not stopped:
        tail = Path(log_path).read_text(errors="replace").splitlines()[-25:]
        why = f"killed after {timeout} s" if timeout and wall > timeout else f"exit {proc.returncode}"
        raise SystemExit(f"[bench] {' '.join(cmd[:4])} ... failed ({why}); {log_path}:\n" + "\n".join(tail))
    res = {
        "wall_s": round(wall, 2),
        "time_to_first_step_s": round(first, 2) if first is not None else None,
        "peak_tree_rss_mb": round(peak["rss"] / 1024, 1),
        "peak_tree_pss_mb": round(peak["pss"] / 1024, 1),
        "max_single_proc_rss_mb": round(peak["hwm"] / 1024, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
    }
    if anon_pss_also is not None:
        res["peak_tree_anon_pss_mb"] = round(peak["anon"] / 1024, 1)
    if gpu_base is not None:
        res["peak_gpu_mem_mib"] = max(0, peak["gpu"] - gpu_base)
    return res
