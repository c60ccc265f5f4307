"""One prepared GPU check: the CUDA tests, then a short fp16 benchmark of ours beside the original.

Run from the repository root on a machine with a CUDA GPU::

    python -m benchmarks.gpu_check      # 7.5 minutes at most; writes benchmarks/GPU_RESULTS.md

It runs, each part in processes of its own and each bounded in time (the whole run stays under
`--budget` seconds, default 450; the report is rewritten after every part, so a run cut short
leaves partial results):

1. the CUDA tests: ``pytest -m cuda tests/test_cuda.py`` (pass / fail / skip counts, failures);
2. ``clip.load`` of ViT-B/32 and RN50 shapes (seeded random weights in the release's layout,
   tests/support/_model_factory.py, saved as state-dict files) onto the GPU, for each side;
3. ``encode_image`` / ``encode_text`` in fp16 (the release's mixed precision) at batch 256 and 1,
   ours and the original, torch.compile off (one process per side) and on (one more per side);
4. the fp16 features of both sides against our fp32 features on the CPU, and the host-to-device
   copy of a batch from pageable and from pinned memory (``preprocess_batch(pin_memory=True)``).

`benchmarks/GPU_RESULTS.md` then holds the GPU name, the torch / CUDA versions and the table, with
the goal rows: ours at least the original's fp16 throughput at batch 256; at least 1.3x with
torch.compile (ours compiled against the original as it runs out of the box); fp16 features within
the tests' fp16 tolerance of the CPU fp32 features (tests/support/_cuda_checks.py: FP16_FEATURE_REL_ERR).

The original (``clip-anytorch``) is looked for in `--oracle`, else ``$CLIP_ORACLE_PATH``, else
``.oracle`` in the repository (git-ignored; the tests' golden scripts use it too). A GPU machine
that cannot reach a package registry gets it from a folder prepared
where pip works and carried along with the working tree, together with the two pure-Python
packages both sides' tokenizers need::

    python -m pip install --no-deps --target .oracle clip-anytorch==2.6.0 ftfy wcwidth "setuptools<81"

Where the environment has no ``ftfy``, the original's folder is also put on the path of our side's
processes, after the repository (our `clip` stays first; each worker checks which one it imported).
Without the original, only our side is measured and the report says so.

Without a GPU the script says so and exits 0 without writing anything. ``--dry-run-cpu`` runs the
whole pipeline on the CPU at tiny sizes (tiny models, batches 1 and 2, torch.compile with the
"eager" backend), writing its report to a temporary path: it checks the plumbing, not the GPU.
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

try:
    from benchmarks import _common
except ImportError:  # run by path as a worker process: benchmarks/ itself is first on sys.path
    import _common  # type: ignore[no-redef]

REPO = _common.REPO
DEFAULT_OUT = REPO / "benchmarks" / "GPU_RESULTS.md"
REPO_ORACLE = REPO / ".oracle"  # the original, ftfy and wcwidth, prepared for a machine without a registry
INSTALL = 'python -m pip install --no-deps --target .oracle clip-anytorch==2.6.0 ftfy wcwidth "setuptools<81"'
WORKER_TAG = "GPUCHECK "  # prefix of the workers' result lines on stdout

MODELS = ("ViT-B/32", "RN50")
DRY_MODELS = ("tiny-vit", "tiny-rn")
BATCHES = (256, 1)  # the goal batch first: rows run in this order until time runs out
DRY_BATCHES = (2, 1)
TOWERS = ("image", "text")
SEED = 0
IMAGE_SEED = 1
TOKEN_SEED = 2
CONTEXT_LENGTH = 77
SOT, EOT = 49406, 49407
MIN_TEXT_TOKENS = 5
FEATURE_ROWS = 8  # images / texts whose features are compared with the CPU fp32 ones
COPY_BATCH = 256  # the host-to-device copy row: one preprocessed batch of 256 images at 224 px
COPY_RESOLUTION = 224
COPY_REPEATS = 5
MIN_ROW_SECONDS = 0.3  # each timing repeat runs passes for at least this long
ROW_REPEATS = 3  # the fastest repeat counts
DRY_ROW_SECONDS = 0.0  # the dry run times one pass, once: it checks the plumbing, not the speed
DRY_ROW_REPEATS = 1
MAX_PASSES = 200

GOAL_EAGER_RATIO = 1.0  # ours >= the original, fp16, batch 256
GOAL_COMPILE_RATIO = 1.3  # ours with torch.compile >= 1.3x the original, batch 256
GOAL_BATCH = 256

DEFAULT_BUDGET_S = 450.0  # the whole run, under the 8 minutes a GPU window allows
DRY_BUDGET_S = 600.0  # the CPU is slower, and a shared machine slower still
# Each part's share at most, in seconds of the default budget (scaled with --budget); a part also
# never gets more than what is left.
PART_CAPS = {
    "prepare": 40.0,
    "tests": 150.0,
    "eager-ours": 45.0,
    "eager-original": 45.0,
    "compile-ours": 130.0,  # inductor compiles each tower and batch size anew: tens of seconds each
    "compile-original": 130.0,
}
MIN_PART_S = 10.0  # a part with less than this left is skipped, not started
RESERVE_S = 5.0  # kept back for the last report
TEST_PATH = "tests/test_cuda.py"
TEST_LINE = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
TAIL_LINES = 40


# ------------------------------------------------------------------------------------------------
# helpers shared by the parent and the workers


def _load_by_path(name: str, relative: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_checks() -> ModuleType:
    """tests/support/_cuda_checks.py (torch only): the tolerance and the feature comparison of the tests."""
    return _load_by_path("_clip_gpu_check_cuda_checks", "tests/support/_cuda_checks.py")


def _emit(kind: str, **fields: Any) -> None:
    print(WORKER_TAG + json.dumps({"kind": kind, **fields}), flush=True)


# ------------------------------------------------------------------------------------------------
# the worker process: one side (ours or the original), one phase (eager or compiled)


class _Worker:
    def __init__(self, spec: Dict[str, Any]) -> None:
        import torch

        self.torch = torch
        self.spec = spec
        self.device = torch.device(spec["device"])
        self.cuda = self.device.type == "cuda"
        self.inputs = torch.load(spec["inputs"], weights_only=True)
        self.models: Dict[str, Any] = {}
        self.encoders: Dict[Tuple[str, str], Callable[[Any], Any]] = {}  # compiled once per tower
        self.saved: Set[Tuple[str, str]] = set()  # towers whose features were saved

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def info(self) -> None:
        import clip

        torch = self.torch
        info: Dict[str, Any] = {"torch": torch.__version__, "clip_file": clip.__file__}
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            info.update(
                gpu=torch.cuda.get_device_name(self.device),
                gpu_memory_gib=round(props.total_memory / 2**30, 1),
                cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(),
            )
        _emit("info", **info)

    def load(self, name: str, path: str) -> None:
        import clip

        self.sync()
        start = time.perf_counter()
        model, _ = clip.load(path, device=self.device, jit=False)
        self.sync()
        seconds = time.perf_counter() - start
        self.models[name] = model
        _emit("load", model=name, seconds=seconds, dtype=str(next(model.parameters()).dtype))

    def batch(self, name: str, tower: str, size: int) -> Any:
        key = f"images_{self.spec['resolutions'][name]}" if tower == "image" else "tokens"
        return self.inputs[key][:size].to(self.device)

    def encoder(self, name: str, tower: str) -> Callable[[Any], Any]:
        model = self.models[name]
        encode = model.encode_image if tower == "image" else model.encode_text
        if self.spec["compile"]:
            return self.torch.compile(encode, backend=self.spec["compile_backend"], dynamic=False)
        return encode

    def row(self, name: str, tower: str, size: int, encode: Callable[[Any], Any]) -> None:
        torch = self.torch
        batch = self.batch(name, tower, size)
        with torch.no_grad():
            self.sync()
            start = time.perf_counter()
            encode(batch)  # first call: compiles under torch.compile
            self.sync()
            first = time.perf_counter() - start
            encode(batch)
            best = math.inf
            for _ in range(self.spec["repeats"]):
                self.sync()
                start = time.perf_counter()
                passes = 0
                while passes < MAX_PASSES and (
                    passes == 0 or time.perf_counter() - start < self.spec["min_row_s"]
                ):
                    encode(batch)
                    passes += 1
                self.sync()
                best = min(best, (time.perf_counter() - start) / passes)
        _emit(
            "row",
            model=name,
            tower=tower,
            batch=size,
            compiled=self.spec["compile"],
            items_per_s=size / best,
            ms_per_batch=best * 1e3,
            first_call_s=first,
        )

    def features(self, name: str, tower: str, encode: Callable[[Any], Any], label: str) -> None:
        torch = self.torch
        with torch.no_grad():
            out = encode(self.batch(name, tower, FEATURE_ROWS)).float().cpu()
        path = Path(self.spec["out_dir"]) / f"features-{label}-{name.replace('/', '-')}-{tower}.pt"
        torch.save(out, path)
        _emit("features", model=name, tower=tower, label=label, path=str(path))

    def reference(self) -> None:
        """Our fp32 features on the CPU (what `clip.load(..., device="cpu")` gives), the accuracy baseline."""
        import clip

        torch = self.torch
        for name, path in self.spec["models"].items():
            model, _ = clip.load(path, device="cpu")
            for tower in TOWERS:
                key = f"images_{self.spec['resolutions'][name]}" if tower == "image" else "tokens"
                with torch.no_grad():
                    encode = model.encode_image if tower == "image" else model.encode_text
                    out = encode(self.inputs[key][:FEATURE_ROWS])
                target = Path(self.spec["out_dir"]) / f"features-cpu-fp32-{name.replace('/', '-')}-{tower}.pt"
                torch.save(out, target)
                _emit("features", model=name, tower=tower, label="cpu-fp32", path=str(target))

    def copy_rates(self) -> None:
        """Host-to-device copy of one preprocessed batch, from pageable and from pinned memory."""
        import clip

        items = [str(REPO / "CLIP.png")] * COPY_BATCH  # one file: decoded once, copied into every row
        pageable = clip.preprocess_batch(items, COPY_RESOLUTION)
        pinned = clip.preprocess_batch(items, COPY_RESOLUTION, pin_memory=True)
        rates = {}
        for label, source, non_blocking in (("pageable", pageable, False), ("pinned", pinned, True)):
            best = math.inf
            for _ in range(COPY_REPEATS):
                self.sync()
                start = time.perf_counter()
                source.to(self.device, non_blocking=non_blocking)
                self.sync()
                best = min(best, time.perf_counter() - start)
            rates[label] = source.numel() * source.element_size() / best / 1e9
        megabytes = pageable.numel() * pageable.element_size() / 1e6
        _emit("copy", megabytes=megabytes, pageable_gb_s=rates["pageable"], pinned_gb_s=rates["pinned"])

    def run(self) -> None:
        """Loads, then rows in order of importance (the first batch size, the CPU reference, the
        other batch sizes, the copy rates), so that a run stopped early keeps what matters most."""
        self.info()
        for name, path in self.spec["models"].items():
            self._guarded(f"load {name}", self.load, name, path)
        for index, size in enumerate(self.spec["batches"]):
            for name in self.spec["models"]:
                for tower in TOWERS:
                    if name in self.models:
                        self._guarded(
                            f"{name} {tower} batch {size}", self._row_and_features, name, tower, size
                        )
            if index == 0 and self.spec.get("reference"):
                self._guarded("CPU fp32 reference", self.reference)
        if self.spec.get("copy") and self.cuda:
            self._guarded("host-to-device copy", self.copy_rates)
        _emit("done")

    def _row_and_features(self, name: str, tower: str, size: int) -> None:
        if (name, tower) not in self.encoders:
            self.encoders[name, tower] = self.encoder(name, tower)
        encode = self.encoders[name, tower]
        self.row(name, tower, size, encode)
        if not self.spec["compile"] and (name, tower) not in self.saved:
            self.saved.add((name, tower))
            self.features(name, tower, encode, self.spec["side"])

    def _guarded(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # one failing row must not lose the others
            message = f"{type(exc).__name__}: {exc}".strip()
            _emit("error", where=what, message=message[:2000])
            if self.cuda:
                self.torch.cuda.empty_cache()


def _worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import clip

    _common.check_imported_from(clip.__file__, spec["expect_root"])
    _Worker(spec).run()


# ------------------------------------------------------------------------------------------------
# the parent


class Budget:
    """The run's deadline, and how much of it each part may use."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.total_s = total_s

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def allow(self, cap_s: float) -> float:
        """Seconds a part capped at `cap_s` may run now; 0 when too little is left to start it."""
        allowed = min(cap_s, self.left() - RESERVE_S)
        return allowed if allowed >= MIN_PART_S else 0.0


def run_bounded(
    command: Sequence[str], env: Dict[str, str], cwd: str, timeout_s: float, log: Any
) -> Tuple[List[str], Optional[int], bool]:
    """Run `command`, collecting its stdout lines (stderr goes to `log`), killed after `timeout_s`.

    Returns (stdout lines, exit code or None when killed, timed out).
    """
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends it with its children
    )
    lines: List[str] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            log.write(line)
            log.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code: Optional[int] = process.wait(timeout=max(timeout_s, 0.1))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        code, timed_out = None, True
    reader.join(timeout=5)
    return lines, code, timed_out


def parse_pytest(lines: Sequence[str]) -> Dict[str, Any]:
    """Outcome counts and failing test ids from the lines of a ``pytest -v`` run."""
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "xfail": 0, "xpass": 0}
    failing: List[str] = []
    for line in lines:
        match = TEST_LINE.match(line.strip())
        if match:
            outcome = match.group(2).lower()
            counts[outcome] += 1
            if outcome in ("failed", "error"):
                failing.append(match.group(1))
    return {"counts": counts, "failing": failing}


def worker_results(lines: Sequence[str]) -> List[Dict[str, Any]]:
    """The result records a worker printed (lines starting with WORKER_TAG)."""
    out = []
    for line in lines:
        if line.startswith(WORKER_TAG):
            try:
                out.append(json.loads(line[len(WORKER_TAG) :]))
            except json.JSONDecodeError:
                continue
    return out


def _side_env(side: str, oracle: Optional[str]) -> Tuple[Dict[str, str], str]:
    if side == "original":
        return _common.oracle_env(oracle)
    env, cwd = _common.ours_env()
    if oracle and importlib.util.find_spec("ftfy") is None:  # our tokenizer needs it too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), oracle) if p)
    return env, cwd


def find_oracle(oracle: Optional[str]) -> Tuple[Optional[str], str]:
    """(folder of the original, or None; a note saying where it came from or why it is missing)."""
    candidates = [oracle] if oracle else []
    if not oracle:
        candidates += [os.environ.get(_common.ORACLE_ENV_VAR), str(REPO_ORACLE), _common.DEFAULT_ORACLE]
    for candidate in candidates:
        if candidate and (Path(candidate) / "clip" / "clip.py").is_file():
            return str(Path(candidate).resolve()), f"clip-anytorch from {candidate}"
    tried = ", ".join(c for c in candidates if c)
    return None, (
        f"the original (clip-anytorch) was not found (looked in {tried}): only our side was measured. "
        f"Prepare it where pip works: `{INSTALL}` in the repository, carry .oracle along, or pass "
        "--oracle DIR."
    )


def prepare(workdir: Path, models: Sequence[str], batch: int) -> Dict[str, Any]:
    """State-dict files of `models` (seeded, release layout) and the inputs both sides use."""
    import torch

    factory = _common.load_model_factory()
    paths, resolutions = {}, {}
    for name in models:
        state_dict = factory.make_state_dict(name, SEED)
        path = workdir / f"{name.replace('/', '-')}.pt"
        torch.save(state_dict, path)
        paths[name] = str(path)
        resolutions[name] = int(state_dict["input_resolution"])
        del state_dict
    inputs = {
        f"images_{res}": factory.make_images(res, IMAGE_SEED, max(batch, FEATURE_ROWS))
        for res in sorted(set(resolutions.values()))
    }
    generator = torch.Generator().manual_seed(TOKEN_SEED)
    rows = max(batch, FEATURE_ROWS)
    tokens = torch.zeros(rows, CONTEXT_LENGTH, dtype=torch.int64)
    for row in range(rows):
        length = int(torch.randint(MIN_TEXT_TOKENS, CONTEXT_LENGTH + 1, (1,), generator=generator))
        tokens[row, 0] = SOT
        tokens[row, 1 : length - 1] = torch.randint(1, SOT, (length - 2,), generator=generator)
        tokens[row, length - 1] = EOT
    inputs["tokens"] = tokens
    inputs_path = workdir / "inputs.pt"
    torch.save(inputs, inputs_path)
    return {"models": paths, "resolutions": resolutions, "inputs": str(inputs_path)}


class Check:
    """The whole run: its options, its results so far, and the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run_cpu
        self.budget = Budget(args.budget)
        self.out = Path(args.out)
        self.log_path = self.out.with_suffix(".log")
        self.oracle, self.oracle_note = find_oracle(args.oracle)
        self.models = list(args.models or (DRY_MODELS if self.dry else MODELS))
        self.batches = list(args.batches or (DRY_BATCHES if self.dry else BATCHES))
        self.device = "cpu" if self.dry else "cuda"
        self.tests: Optional[Dict[str, Any]] = None
        self.tests_note = ""
        self.records: Dict[str, List[Dict[str, Any]]] = {}  # part -> worker records
        self.notes: List[str] = []
        self.parts_cut: List[str] = []
        self.started = datetime.datetime.now(datetime.timezone.utc)

    # -- running --------------------------------------------------------------------------------

    def cap(self, part: str) -> float:
        return PART_CAPS[part] * self.budget.total_s / DEFAULT_BUDGET_S

    def run(self) -> int:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(prefix="clip-gpu-check-") as tmp,
            open(self.log_path, "w", encoding="utf-8") as log,
        ):
            self.log = log
            workdir = Path(tmp)
            if not self.args.skip_tests:
                self.run_tests()
            self.write()
            allowed = self.budget.allow(self.cap("prepare"))
            if not allowed:
                self.parts_cut.append("prepare (and every benchmark part)")
            else:
                start = time.monotonic()
                spec = prepare(workdir, self.models, max(self.batches))
                self.notes.append(f"models and inputs prepared in {time.monotonic() - start:.1f} s")
                spec.update(
                    device=self.device,
                    batches=self.batches,
                    out_dir=str(workdir),
                    min_row_s=DRY_ROW_SECONDS if self.dry else MIN_ROW_SECONDS,
                    repeats=DRY_ROW_REPEATS if self.dry else ROW_REPEATS,
                )
                for phase in ("eager", "compile"):
                    if phase == "compile" and self.args.no_compile:
                        continue
                    for side in ("ours", "original"):
                        self.run_worker(phase, side, spec, workdir)
                        self.write()
            self.write()
        print(f"report written to {self.out} (log: {self.log_path})")
        return 0

    def run_tests(self) -> None:
        allowed = self.budget.allow(self.cap("tests"))
        if not allowed:
            self.parts_cut.append("tests")
            return
        env, cwd = _side_env("ours", self.oracle)
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "cuda",
            TEST_PATH,
            "-v",
            "-rs",
            "-p",
            "no:cacheprovider",
        ]
        print(f"running the CUDA tests ({allowed:.0f} s at most) ...", flush=True)
        self.log.write(f"\n==== {' '.join(command)}\n")
        start = time.monotonic()
        lines, code, timed_out = run_bounded(command, env, cwd, allowed, self.log)
        self.notes.append(f"tests: {time.monotonic() - start:.0f} s")
        self.tests = parse_pytest(lines)
        self.tests.update(exit_code=code, timed_out=timed_out, tail=lines[-TAIL_LINES:])
        if timed_out:
            self.tests_note = (
                f"stopped after {allowed:.0f} s (time budget): counts are of the tests that finished"
            )
        elif code not in (0, 1, 5):  # 5: no tests collected
            self.tests_note = f"pytest exited with code {code}"

    def run_worker(self, phase: str, side: str, spec: Dict[str, Any], workdir: Path) -> None:
        part = f"{phase}-{side}"
        if side == "original" and self.oracle is None:
            return
        allowed = self.budget.allow(self.cap(part))
        if not allowed:
            self.parts_cut.append(part)
            return
        worker_spec = dict(
            spec,
            side=side,
            compile=phase == "compile",
            compile_backend=self.args.compile_backend or ("eager" if self.dry else "inductor"),
            reference=phase == "eager" and side == "ours",
            copy=phase == "eager" and side == "ours",
            expect_root=self.oracle if side == "original" else str(REPO),
        )
        spec_path = workdir / f"spec-{part}.json"
        spec_path.write_text(json.dumps(worker_spec), encoding="utf-8")
        env, cwd = _side_env(side, self.oracle)
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
        print(f"running {part} ({allowed:.0f} s at most) ...", flush=True)
        self.log.write(f"\n==== {part}: {' '.join(command)}\n")
        self.log.flush()
        start = time.monotonic()
        lines, code, timed_out = run_bounded(command, env, cwd, allowed, self.log)
        self.notes.append(f"{part}: {time.monotonic() - start:.0f} s")
        records = worker_results(lines)
        self.records[part] = records
        if timed_out:
            self.notes.append(
                f"{part}: stopped after {allowed:.0f} s (time budget); rows not reached are missing"
            )
        elif code != 0 or not any(r["kind"] == "done" for r in records):
            self.notes.append(f"{part}: the process ended with exit code {code}; see {self.log_path.name}")
        for record in records:
            if record["kind"] == "error":
                self.notes.append(f"{part}: {record['where']}: {record['message']}")

    # -- results ---------------------------------------------------------------------------------

    def _records(self, part: str, kind: str) -> List[Dict[str, Any]]:
        return [r for r in self.records.get(part, []) if r["kind"] == kind]

    def rate(self, phase: str, side: str, model: str, tower: str, batch: int) -> Optional[Dict[str, Any]]:
        for record in self._records(f"{phase}-{side}", "row"):
            if (record["model"], record["tower"], record["batch"]) == (model, tower, batch):
                return record
        return None

    def accuracy(self) -> List[Dict[str, Any]]:
        import torch

        checks = cuda_checks()
        paths: Dict[Tuple[str, str, str], str] = {}
        for record in self._records("eager-ours", "features") + self._records("eager-original", "features"):
            paths[(record["label"], record["model"], record["tower"])] = record["path"]
        rows = []
        for model in self.models:
            for tower in TOWERS:
                reference = paths.get(("cpu-fp32", model, tower))
                if reference is None or not Path(reference).is_file():
                    continue
                expected = torch.load(reference, weights_only=True)
                row: Dict[str, Any] = {"model": model, "tower": tower}
                for side in ("ours", "original"):
                    path = paths.get((side, model, tower))
                    if path and Path(path).is_file():
                        row[side] = checks.feature_errors(torch.load(path, weights_only=True), expected)
                rows.append(row)
        return rows

    def info(self) -> Dict[str, Any]:
        for record in self._records("eager-ours", "info") + self._records("compile-ours", "info"):
            return record
        return {}

    # -- the report -----------------------------------------------------------------------------

    def write(self) -> None:
        text = self.report()
        partial = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, self.out)

    def report(self) -> str:
        import torch

        lines = ["# GPU check", ""]
        if self.dry:
            lines += [
                "**DRY RUN on the CPU (`--dry-run-cpu`): tiny models, fp32, torch.compile with the "
                f"`{self.args.compile_backend or 'eager'}` backend. These are not GPU results.**",
                "",
            ]
        elapsed = self.budget.elapsed()
        status = "complete" if not (self.parts_cut or self._timeouts()) else "PARTIAL (time budget)"
        lines += [
            f"Written by `python -m benchmarks.gpu_check` at {self.started:%Y-%m-%d %H:%M} UTC, "
            f"{elapsed:.0f} s into a {self.budget.total_s:.0f} s budget; {status}.",
            "",
        ]
        info = self.info()
        gpu = info.get("gpu") or ("none (CPU dry run)" if self.dry else "not reached")
        if info.get("gpu_memory_gib"):
            gpu += f" ({info['gpu_memory_gib']} GiB)"
        lines += [
            "| | |",
            "|---|---|",
            f"| GPU | {gpu} |",
            f"| torch | {info.get('torch', torch.__version__)} |",
            f"| CUDA / cuDNN | {info.get('cuda', torch.version.cuda)} / {info.get('cudnn', '-')} |",
            f"| original | {self.oracle_note} |",
            f"| models | {', '.join(self.models)} (seeded random weights, release layout) |",
            "",
        ]
        lines += ["## Goals", ""] + self.goal_table() + [""]
        lines += self.throughput_section() + self.load_section() + self.copy_section()
        lines += self.accuracy_section() + self.tests_section()
        notes = list(self.notes)
        if self.parts_cut:
            notes.append(f"not run for lack of time: {', '.join(self.parts_cut)}")
        if notes:
            lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
        return "\n".join(lines)

    def _timeouts(self) -> bool:
        return bool(self.tests and self.tests.get("timed_out")) or any(
            "time budget" in note for note in self.notes
        )

    def goal_table(self) -> List[str]:
        checks = cuda_checks()
        rows = ["| goal | measured | met |", "|---|---|---|"]
        if self.tests is not None:
            counts = self.tests["counts"]
            ok = (
                counts["failed"] == counts["error"] == 0
                and counts["passed"] > 0
                and not self.tests["timed_out"]
            )
            summary = ", ".join(f"{value} {key}" for key, value in counts.items() if value)
            measured = "; ".join(text for text in (summary or "none ran", self.tests_note) if text)
            rows.append(f"| CUDA tests pass | {measured} | {_met(ok)} |")
        else:
            rows.append("| CUDA tests pass | not run | - |")
        batch = GOAL_BATCH if GOAL_BATCH in self.batches else max(self.batches)
        dtype = "fp32 (dry run)" if self.dry else "fp16"
        for label, phase, goal in (
            (f"ours >= original, {dtype}, batch {batch}", "eager", GOAL_EAGER_RATIO),
            (
                f"ours with torch.compile >= {GOAL_COMPILE_RATIO}x original, batch {batch}",
                "compile",
                GOAL_COMPILE_RATIO,
            ),
        ):
            ratios = []
            for model in self.models:
                for tower in TOWERS:
                    ours = self.rate(phase, "ours", model, tower, batch)
                    original = self.rate("eager", "original", model, tower, batch)
                    if ours and original:
                        ratios.append((f"{model} {tower}", ours["items_per_s"] / original["items_per_s"]))
            measured = ", ".join(f"{where} {ratio:.2f}x" for where, ratio in ratios) or "not measured"
            met = _met(all(r >= goal for _, r in ratios)) if ratios else "-"
            rows.append(f"| {label} | {measured} | {met} |")
        accuracy = [row for row in self.accuracy() if "ours" in row]
        if accuracy:
            worst = max(row["ours"]["rel_err"] for row in accuracy)
            rows.append(
                f"| fp16 features within tolerance of CPU fp32 "
                f"(relative L2 <= {checks.FP16_FEATURE_REL_ERR:g}) "
                f"| worst {worst:.2e} | {_met(worst <= checks.FP16_FEATURE_REL_ERR)} |"
            )
        else:
            rows.append("| fp16 features within tolerance of CPU fp32 | not measured | - |")
        return rows

    def throughput_section(self) -> List[str]:
        dtype = "fp32 (CPU dry run)" if self.dry else "fp16"
        repeats = DRY_ROW_REPEATS if self.dry else ROW_REPEATS
        lines = [
            f"## Throughput ({dtype}, items/s; torch.no_grad; best of {repeats} timed repeats)",
            "",
            "| model | tower | batch | ours | original | ours / original | ours compiled | original compiled "
            "| ours compiled / original | first compiled call, ours / original (s) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for batch in self.batches:
            for model in self.models:
                for tower in TOWERS:
                    cells = {
                        (phase, side): self.rate(phase, side, model, tower, batch)
                        for phase in ("eager", "compile")
                        for side in ("ours", "original")
                    }
                    if not any(cells.values()):
                        continue
                    rate = {key: (value["items_per_s"] if value else None) for key, value in cells.items()}
                    first = [
                        cells[("compile", s)]["first_call_s"] if cells[("compile", s)] else None
                        for s in ("ours", "original")
                    ]
                    row = [
                        model,
                        tower,
                        str(batch),
                        _num(rate["eager", "ours"]),
                        _num(rate["eager", "original"]),
                        _ratio(rate["eager", "ours"], rate["eager", "original"]),
                        _num(rate["compile", "ours"]),
                        _num(rate["compile", "original"]),
                        _ratio(rate["compile", "ours"], rate["eager", "original"]),
                        f"{_num(first[0], 1)} / {_num(first[1], 1)}",
                    ]
                    lines.append("| " + " | ".join(row) + " |")
        return lines + [""]

    def load_section(self) -> List[str]:
        lines = [
            f"## clip.load onto the {'CPU' if self.dry else 'GPU'} (state-dict file, jit=False; seconds)",
            "",
            "| model | ours | original | original / ours |",
            "|---|---:|---:|---:|",
        ]
        found = False
        for model in self.models:
            seconds = {}
            for side in ("ours", "original"):
                for record in self._records(f"eager-{side}", "load"):
                    if record["model"] == model:
                        seconds[side] = record["seconds"]
            if seconds:
                found = True
                ours, original = seconds.get("ours"), seconds.get("original")
                lines.append(
                    f"| {model} | {_num(ours, 2)} | {_num(original, 2)} | {_ratio(original, ours)} |"
                )
        return lines + [""] if found else []

    def copy_section(self) -> List[str]:
        records = self._records("eager-ours", "copy")
        if not records:
            return []
        record = records[0]
        return [
            f"## Host-to-device copy of one batch ({COPY_BATCH} x 3 x {COPY_RESOLUTION} x "
            f"{COPY_RESOLUTION} fp32, "
            f"{record['megabytes']:.0f} MB; GB/s)",
            "",
            "| from | GB/s |",
            "|---|---:|",
            f"| pageable memory, `.to('cuda')` | {record['pageable_gb_s']:.1f} |",
            f"| pinned memory (`preprocess_batch(..., pin_memory=True)`), `non_blocking=True` "
            f"| {record['pinned_gb_s']:.1f} |",
            "",
        ]

    def accuracy_section(self) -> List[str]:
        rows = self.accuracy()
        if not rows:
            return []
        lines = [
            f"## Features against our fp32 features on the CPU (first {FEATURE_ROWS} inputs; worst row)",
            "",
            "| model | tower | ours: relative L2 | ours: cosine | original: relative L2 | original: cosine |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in rows:
            cells = []
            for side in ("ours", "original"):
                errors = row.get(side)
                cells += [f"{errors['rel_err']:.2e}", f"{errors['cosine']:.7f}"] if errors else ["-", "-"]
            lines.append(f"| {row['model']} | {row['tower']} | " + " | ".join(cells) + " |")
        return lines + [""]

    def tests_section(self) -> List[str]:
        if self.tests is None:
            return []
        lines = [f"## CUDA tests (`pytest -m cuda {TEST_PATH}`)", ""]
        counts = self.tests["counts"]
        lines.append(
            ", ".join(f"{value} {key}" for key, value in counts.items()) + f". {self.tests_note}".rstrip(". ")
        )
        lines.append("")
        if self.tests["failing"]:
            lines += ["Failing:", ""] + [f"- `{test}`" for test in self.tests["failing"]] + [""]
        if self.tests["failing"] or self.tests_note:
            lines += ["Last lines of the output:", "", "```text", *self.tests["tail"], "```", ""]
        return lines


def _met(ok: Optional[bool]) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def _num(value: Optional[float], digits: Optional[int] = None) -> str:
    """`digits` decimals, or for rates (digits None): whole numbers from 100 up, else 3 significant digits."""
    if value is None:
        return "-"
    if digits is None:
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return f"{value:,.{digits}f}"


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    return "-" if not numerator or not denominator else f"{numerator / denominator:.2f}x"


def no_gpu_message() -> str:
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a build without CUDA"
    return (
        f"no CUDA GPU here (torch {torch.__version__}, {build}: torch.cuda.is_available() is False): "
        f"nothing was run and {DEFAULT_OUT.relative_to(REPO)} was not written. Run this on a machine "
        "with a GPU; `python -m benchmarks.gpu_check --dry-run-cpu` exercises the script here."
    )


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--oracle", help="folder holding the original clip (default: see the module docstring)"
    )
    parser.add_argument(
        "--out", help=f"the report (default: {DEFAULT_OUT.relative_to(REPO)}; dry run: a temp path)"
    )
    parser.add_argument(
        "--budget", type=float, help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f})"
    )
    parser.add_argument("--models", nargs="+", help=f"model shapes (default {' '.join(MODELS)})")
    parser.add_argument(
        "--batches", nargs="+", type=int, help="batch sizes, most important first (default 256 1)"
    )
    parser.add_argument("--skip-tests", action="store_true", help="do not run the CUDA tests")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor; dry run: eager)")
    parser.add_argument(
        "--dry-run-cpu", action="store_true", help="the whole pipeline on the CPU at tiny sizes"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = DRY_BUDGET_S if args.dry_run_cpu else DEFAULT_BUDGET_S
    if args.out is None:
        dry_dir = (
            Path(tempfile.gettempdir())
            / f"clip-gpu-check-dry-run-{os.getuid() if hasattr(os, 'getuid') else 0}"
        )
        args.out = str(dry_dir / "GPU_RESULTS.md") if args.dry_run_cpu else str(DEFAULT_OUT)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    if args.worker:
        _worker_main(args.worker)
        return 0
    import torch

    if not args.dry_run_cpu and not torch.cuda.is_available():
        print(no_gpu_message())
        return 0
    check = Check(args)
    print(f"GPU check: budget {args.budget:.0f} s; {check.oracle_note}", flush=True)
    return check.run()


if __name__ == "__main__":
    sys.exit(main())
