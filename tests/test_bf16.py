"""bf16 on the CPU (clip/_bf16.py): torch's bf16 kernels or fp32 products, chosen by measurement.

Tests of the fp32 products force them (`CLIP_CPU_BF16_KERNELS=fp32`), so they run that way on any
CPU; the measurement's choice is steered by patching its timer (`_measure`), so both branches run on
any machine. The reference is torch's own bf16 kernels (`CLIP_CPU_BF16_KERNELS=torch`).
"""

import threading
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Tuple

import _model_factory as factory
import pytest
import torch
import torch.nn.functional as F

import clip._bf16 as bf16
from clip import _versions
from clip.model import build_model

MIN_COSINE_TO_TORCH_BF16 = 0.9999  # the same arithmetic, summed in another order
MIN_COSINE_TO_FP32 = 0.999  # issue 6's bar for bf16 features


@pytest.fixture(autouse=True)
def fresh_decisions() -> Iterator[None]:
    """Each test starts and ends with no measured decision (a patched timer's must not leak)."""
    bf16.clear_decisions()
    yield
    bf16.clear_decisions()


@pytest.fixture
def fp32_products(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Force the fp32 products (the choice on CPUs whose bf16 kernels are slow), whatever this CPU has."""
    monkeypatch.setenv(bf16.ENV_VAR, bf16.FP32_PRODUCTS)
    yield


def _fake_timer(winner: str, calls: List[int]) -> Callable[..., Dict[str, float]]:
    """A stand-in for `_measure` that reports `winner` as the fastest way; where a product cannot go
    the oneDNN way, "fp32" (its fallback) comes next."""

    def measure(runs: Dict[str, Callable[[], Any]]) -> Dict[str, float]:
        calls.append(1)
        assert bf16.TORCH_KERNELS in runs and bf16.FP32_PRODUCTS in runs
        return {way: 1.0 if way == winner else 1.5 if way == bf16.FP32_PRODUCTS else 2.0 for way in runs}

    return measure


def _needs_onednn_packing(way: str) -> None:
    if way == bf16.ONEDNN_FP32 and not (bf16._onednn_packing() and bf16._onednn_conv_packing()):
        pytest.skip("this torch cannot pack fp32 weights for oneDNN (no mkldnn build or private ops)")
    if way == bf16.PACKED_BF16 and not (bf16._bf16_linear_packing() and bf16._bf16_conv_packing()):
        pytest.skip("this torch cannot pack bf16 weights for oneDNN (no mkldnn build or private ops)")


def _force(way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every product `way` where it can go (CLIP_CPU_BF16_KERNELS); skipped where this torch cannot."""
    _needs_onednn_packing(way)
    monkeypatch.setenv(bf16.ENV_VAR, way)


@pytest.fixture(scope="module")
def models() -> Dict[str, Dict[str, torch.nn.Module]]:
    out = {}
    for config in ("tiny-vit", "tiny-rn"):
        state_dict = factory.make_state_dict(config, 0)
        out[config] = {
            "fp32": build_model(state_dict).float().eval(),
            "bf16": build_model(state_dict).float().to(torch.bfloat16).eval(),
        }
    return out


def _inputs(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    images = factory.make_images(model.visual.input_resolution, seed=1, batch=3)
    text = torch.randint(
        1, model.vocab_size - 1, (3, model.context_length), generator=torch.Generator().manual_seed(2)
    )
    text[:, 0], text[torch.arange(3), torch.tensor([5, 20, model.context_length - 1])] = (
        0,
        model.vocab_size - 1,
    )
    return {"image": images, "text": text}


def _encode(model: torch.nn.Module, tower: str, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(x) if tower == "image" else model.encode_text(x)


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float(), b.float(), dim=-1).min().item()


def test_context_is_active_only_where_it_helps(fp32_products: None, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert isinstance(bf16.bf16_compute(cpu, torch.bfloat16), bf16._Float32Products)
    assert not isinstance(bf16.bf16_compute(cpu, torch.float32), bf16._Float32Products)
    assert not isinstance(bf16.bf16_compute(cpu, torch.float16), bf16._Float32Products)
    assert not isinstance(bf16.bf16_compute(cuda, torch.bfloat16), bf16._Float32Products)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert isinstance(bf16.bf16_compute(cpu, torch.float32), bf16._Float32Products)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not isinstance(bf16.bf16_compute(cpu, torch.float32), bf16._Float32Products)
    monkeypatch.setenv(bf16.ENV_VAR, "torch")
    assert not isinstance(bf16.bf16_compute(cpu, torch.bfloat16), bf16._Float32Products)
    monkeypatch.delenv(bf16.ENV_VAR)
    # The oneDNN flag no longer decides: a CPU that reports bf16 support is measured too.
    monkeypatch.setattr(bf16, "native_bf16_supported", lambda: True)
    assert isinstance(bf16.bf16_compute(cpu, torch.bfloat16), bf16._Float32Products)


def test_native_support_query_answers_a_bool() -> None:
    assert isinstance(bf16.native_bf16_supported(), bool)


@pytest.mark.parametrize("config", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("tower", ["image", "text"])
def test_bf16_model_matches_torch_bf16_kernels(
    config: str,
    tower: str,
    models: Dict[str, Dict[str, torch.nn.Module]],
    fp32_products: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, reference = models[config]["bf16"], models[config]["fp32"]
    x = _inputs(model)[tower]
    x_bf16 = x.bfloat16() if x.is_floating_point() else x
    ours = _encode(model, tower, x_bf16)
    monkeypatch.setenv(bf16.ENV_VAR, "torch")
    torchs = _encode(model, tower, x_bf16)
    assert ours.dtype == torchs.dtype == torch.bfloat16
    assert _min_cosine(ours, torchs) >= MIN_COSINE_TO_TORCH_BF16
    assert _min_cosine(ours, _encode(reference, tower, x)) >= MIN_COSINE_TO_FP32


@pytest.mark.parametrize("config", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("tower", ["image", "text"])
def test_autocast_matches_torch_autocast(
    config: str,
    tower: str,
    models: Dict[str, Dict[str, torch.nn.Module]],
    fp32_products: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = models[config]["fp32"]
    x = _inputs(model)[tower]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _encode(model, tower, x)
        monkeypatch.setenv(bf16.ENV_VAR, "torch")
        torchs = _encode(model, tower, x)
    assert ours.dtype == torchs.dtype  # what autocast gives, whichever kernels ran
    assert _min_cosine(ours, torchs) >= MIN_COSINE_TO_TORCH_BF16
    assert _min_cosine(ours, _encode(model, tower, x)) >= MIN_COSINE_TO_FP32


def test_products_are_rounded_like_torch_bf16(fp32_products: None) -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(64, 256, generator=generator).bfloat16()
    w = torch.randn(128, 256, generator=generator).bfloat16()
    exact = F.linear(a.double(), w.double())
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        ours = F.linear(a, w)
        product = a @ w.t()
    assert ours.dtype == product.dtype == torch.bfloat16
    # fp32 accumulation, then one rounding to bf16: within half a bf16 ulp (2^-8 relative) of exact
    torch.testing.assert_close(ours.double(), exact, rtol=2**-8, atol=1e-6)
    torch.testing.assert_close(product, ours, rtol=0, atol=0)


def test_mixed_dtypes_still_raise_outside_autocast(fp32_products: None) -> None:
    a, w = torch.ones(2, 4, dtype=torch.bfloat16), torch.ones(3, 4)
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16), pytest.raises(RuntimeError):
        F.linear(a, w)  # torch's own error: the fallback does not paper over a dtype mismatch


def test_gradients_flow_through_the_fallback(
    models: Dict[str, Dict[str, torch.nn.Module]], fp32_products: None
) -> None:
    model = build_model(factory.make_state_dict("tiny-vit", 0)).float().to(torch.bfloat16)
    images = factory.make_images(model.visual.input_resolution, seed=1, batch=2).bfloat16()
    model.encode_image(images).float().pow(2).sum().backward()
    grad = model.visual.transformer.resblocks[0].mlp.c_fc.weight.grad
    assert (
        grad is not None
        and grad.dtype == torch.bfloat16
        and torch.isfinite(grad).all()
        and grad.abs().sum() > 0
    )


def test_hooks_fire_and_modules_stay_plain(
    models: Dict[str, Dict[str, torch.nn.Module]], fp32_products: None
) -> None:
    model = models["tiny-vit"]["bf16"]
    c_fc = model.visual.transformer.resblocks[0].mlp.c_fc
    assert type(c_fc) is torch.nn.Linear  # quantize_dynamic and the like still find it
    seen = []
    handle = c_fc.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    try:
        _encode(model, "image", _inputs(model)["image"].bfloat16())
    finally:
        handle.remove()
    assert seen == [torch.bfloat16]


def test_trace_and_compile_see_the_same_numbers(
    models: Dict[str, Dict[str, torch.nn.Module]], fp32_products: None
) -> None:
    model = models["tiny-vit"]["bf16"]
    images = _inputs(model)["image"].bfloat16()
    with torch.no_grad():
        eager = model.encode_image(images)
        traced = torch.jit.trace(model.visual, images)  # the mode is not entered by visual alone
        compiled = torch.compile(model.encode_image, backend="eager")  # dynamo through the mode
        torch.testing.assert_close(traced(images), model.visual(images), rtol=0, atol=0)
        torch.testing.assert_close(compiled(images), eager, rtol=0, atol=0)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_encoders_route_their_products_through_the_fallback(
    tower: str,
    models: Dict[str, Dict[str, torch.nn.Module]],
    fp32_products: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    widened: List[str] = []

    class Spy(bf16._Float32Products):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func in bf16._PRODUCTS:
                widened.append(getattr(func, "__name__", str(func)))
            return super().__torch_function__(func, types, args, kwargs)

    monkeypatch.setattr(bf16, "_Float32Products", Spy)
    model = models["tiny-vit"]["bf16"]
    x = _inputs(model)[tower]
    _encode(model, tower, x.bfloat16() if x.is_floating_point() else x)
    assert "linear" in widened and "scaled_dot_product_attention" in widened
    if tower == "image":
        assert "conv2d" in widened


def _linear_operands(rows: int, k: int = 64, n: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows)
    a = torch.randint(-8, 8, (rows, k), generator=generator).bfloat16() / 8
    w = torch.randint(-8, 8, (n, k), generator=generator).bfloat16() / 8
    return a, w


def _linear_in_context(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        return F.linear(a, w)


@pytest.mark.parametrize("choice", [bf16.TORCH_KERNELS, bf16.FP32_PRODUCTS, bf16.ONEDNN_FP32])
def test_env_var_forces_each_way_without_measuring(choice: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_timing(*args: Any) -> Tuple[float, float]:
        raise AssertionError("a forced choice must not be measured")

    monkeypatch.setattr(bf16, "_measure", no_timing)
    monkeypatch.setenv(bf16.ENV_VAR, choice)
    a, w = _linear_operands(8)
    ours = _linear_in_context(a, w)
    # a plain tensor as weight: the oneDNN way keeps no packed copy of it and takes the fp32 way
    expected = F.linear(a, w) if choice == bf16.TORCH_KERNELS else F.linear(a.float(), w.float()).bfloat16()
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)  # the same kernels, the same bits
    assert bf16.decisions() == {}


def test_an_unknown_env_value_warns_and_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[int] = []
    monkeypatch.setattr(bf16, "_measure", _fake_timer(bf16.TORCH_KERNELS, calls))
    monkeypatch.setenv(bf16.ENV_VAR, "fastest")
    with pytest.warns(UserWarning, match=bf16.ENV_VAR):
        _linear_in_context(*_linear_operands(8))
    assert calls == [1]


@pytest.mark.parametrize("winner", [bf16.TORCH_KERNELS, bf16.FP32_PRODUCTS])
def test_the_measured_winner_is_used_and_cached_per_shape_class(
    winner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(bf16.ENV_VAR, raising=False)
    calls: List[int] = []
    monkeypatch.setattr(bf16, "_measure", _fake_timer(winner, calls))
    for rows in (5, 6, 8, 5):  # one class: 5..8 rows share the power-of-two bucket 8
        a, w = _linear_operands(rows)
        ours = _linear_in_context(a, w)
        if winner == bf16.TORCH_KERNELS:
            expected = F.linear(a, w)
        else:
            expected = F.linear(a.float(), w.float()).bfloat16()
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert len(calls) == 1
    _linear_in_context(*_linear_operands(9))  # the next bucket: a new class
    _linear_in_context(*_linear_operands(8, k=32))  # another width: a new class
    assert len(calls) == 3
    assert set(bf16.decisions().values()) == {winner}
    bf16.clear_decisions()
    _linear_in_context(*_linear_operands(8))
    assert len(calls) == 4


def _scripted_runs(
    times: Dict[str, List[float]], monkeypatch: pytest.MonkeyPatch
) -> Tuple[Dict[str, Callable[[], Any]], List[str]]:
    """Runs for `_measure` whose timings come from `times` (way -> its runs' seconds, in order, the
    untimed warm-up of a non-torch way first); also the order in which the ways ran."""
    order: List[str] = []
    left = {way: iter(seconds) for way, seconds in times.items()}
    runs = {way: (lambda way=way: order.append(way) or way) for way in times}
    monkeypatch.setattr(bf16, "_seconds", lambda run: next(left[run()]))
    return runs, order


def test_a_lucky_run_does_not_win_the_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    # fp32 is 10% slower in every round but one, where the machine happened to be quiet for it
    fp32 = [9.0, 1.1, 1.1, 0.6, 1.1, 1.1]
    onednn = [9.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    monkeypatch.setattr(bf16, "MEASURE_BUDGET_S", 0.0)
    runs, _ = _scripted_runs(
        {bf16.FP32_PRODUCTS: fp32, bf16.ONEDNN_FP32: onednn, bf16.TORCH_KERNELS: [5.0]}, monkeypatch
    )
    times = bf16._measure(runs)
    assert min(times, key=times.__getitem__) == bf16.ONEDNN_FP32
    assert times[bf16.FP32_PRODUCTS] == pytest.approx(1.1) and times[bf16.ONEDNN_FP32] == pytest.approx(1.0)


def test_paired_rounds_see_through_the_machine_slowing_down(monkeypatch: pytest.MonkeyPatch) -> None:
    # onednn's first timing falls in a quiet moment; then another process starts and every run takes
    # about three times as long, but within each round fp32 stays 20% faster than onednn
    fp32 = [9.0, 1.4, 2.4, 2.4, 2.4]
    onednn = [9.0, 1.0, 3.0, 3.0, 3.0]
    monkeypatch.setattr(bf16, "MEASURE_BUDGET_S", 0.0)
    runs, _ = _scripted_runs({bf16.FP32_PRODUCTS: fp32, bf16.ONEDNN_FP32: onednn}, monkeypatch)
    times = bf16._measure(runs)
    assert times[bf16.FP32_PRODUCTS] < times[bf16.ONEDNN_FP32]


def test_rounds_alternate_and_stop_at_the_budget_or_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = bf16.FP32_PRODUCTS, bf16.TORCH_KERNELS
    many = [0.001] * (bf16.MEASURE_MAX_ROUNDS + 2)
    # fast products: rounds go on to the cap; torch, CLEAR_WIN times slower, runs once
    runs, order = _scripted_runs({fast: many, bf16.ONEDNN_FP32: many, slow: [0.01]}, monkeypatch)
    bf16._measure(runs)
    assert order.count(slow) == 1
    assert order.count(fast) == order.count(bf16.ONEDNN_FP32) == 2 + bf16.MEASURE_MAX_ROUNDS
    rounds = order[5:]  # after the warm-ups and first timings
    assert rounds[:2] != rounds[2:4]  # the order rotates from round to round
    # slow products: the budget is spent after the first rounds, which are at least MEASURE_MIN_ROUNDS
    slow_runs = [bf16.MEASURE_BUDGET_S] * (bf16.MEASURE_MAX_ROUNDS + 2)
    runs, order = _scripted_runs({fast: slow_runs, bf16.ONEDNN_FP32: slow_runs}, monkeypatch)
    bf16._measure(runs)
    assert order.count(fast) == 2 + bf16.MEASURE_MIN_ROUNDS


def test_large_batches_share_the_measured_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bf16.ENV_VAR, raising=False)
    calls: List[int] = []
    monkeypatch.setattr(bf16, "_measure", _fake_timer(bf16.FP32_PRODUCTS, calls))
    for rows in (bf16.MEASURE_GEMM_ROWS + 1, 10 * bf16.MEASURE_GEMM_ROWS):
        _linear_in_context(*_linear_operands(rows))
    assert len(calls) == 1


def test_one_thread_measures_a_class_the_others_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bf16.ENV_VAR, raising=False)
    calls: List[int] = []
    fake = _fake_timer(bf16.FP32_PRODUCTS, calls)

    def slow_measure(runs: Dict[str, Callable[[], Any]]) -> Dict[str, float]:
        time.sleep(0.05)  # long enough for the other threads to arrive while it measures
        return fake(runs)

    monkeypatch.setattr(bf16, "_measure", slow_measure)
    a, w = _linear_operands(8)
    expected = F.linear(a.float(), w.float()).bfloat16()
    results: List[torch.Tensor] = []
    threads = [threading.Thread(target=lambda: results.append(_linear_in_context(a, w))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 4
    for result in results:
        torch.testing.assert_close(result, expected, rtol=0, atol=0)


def test_the_real_measurement_decides_and_is_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bf16.ENV_VAR, raising=False)
    a, w = _linear_operands(4 * bf16.MEASURE_GEMM_ROWS, k=768, n=768)
    ours = _linear_in_context(a, w)
    # whichever way won, fp32 accumulation and one rounding: within half a bf16 ulp of exact
    torch.testing.assert_close(ours.double(), F.linear(a.double(), w.double()), rtol=2**-8, atol=1e-6)
    assert list(bf16.decisions().values()) in ([bf16.TORCH_KERNELS], [bf16.FP32_PRODUCTS])


def _measured_call(layer: torch.nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, List[List[str]]]:
    """`layer(x)` with the real measurement deciding; also the ways each measurement timed."""
    timed: List[List[str]] = []
    measure = bf16._measure

    def spy(runs: Dict[str, Callable[[], Any]]) -> Dict[str, float]:
        timed.append(sorted(runs))
        return measure(runs)

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(bf16.ENV_VAR, raising=False)
        patch.setattr(bf16, "_measure", spy)
        with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
            return layer(x), timed


def test_the_real_measurement_times_the_onednn_way_for_linear_layers() -> None:
    _needs_onednn_packing(bf16.ONEDNN_FP32)
    layer = torch.nn.Linear(768, 768).to(torch.bfloat16).requires_grad_(False)
    x = _linear_operands(64, k=768)[0]
    ours, measured = _measured_call(layer, x)
    (timed,) = measured
    ways = [bf16.TORCH_KERNELS, bf16.FP32_PRODUCTS, bf16.ONEDNN_FP32]
    if bf16._bf16_linear_packing():
        ways.append(bf16.PACKED_BF16)
    assert timed == sorted(ways)
    assert list(bf16.decisions().values())[0] in timed
    exact = F.linear(x.double(), layer.weight.double(), layer.bias.double())
    torch.testing.assert_close(ours.double(), exact, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize(
    "winner", [bf16.TORCH_KERNELS, bf16.FP32_PRODUCTS, bf16.ONEDNN_FP32, bf16.MATMUL_CONV]
)
@pytest.mark.parametrize("config", ["tiny-vit", "tiny-rn"])
def test_measured_model_matches_the_forced_way_and_fp32(
    winner: str,
    config: str,
    models: Dict[str, Dict[str, torch.nn.Module]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _needs_onednn_packing(winner)
    model, reference = models[config]["bf16"], models[config]["fp32"]
    images = _inputs(model)["image"]
    monkeypatch.delenv(bf16.ENV_VAR, raising=False)
    calls: List[int] = []
    monkeypatch.setattr(bf16, "_measure", _fake_timer(winner, calls))
    measured = _encode(model, "image", images.bfloat16())
    ways = set(bf16.decisions().values())
    won = {key[0] for key, way in bf16.decisions().items() if way == winner}
    if winner == bf16.ONEDNN_FP32:  # linear layers and convolutions: attention, `@ proj` take fp32
        assert ways == {winner, bf16.FP32_PRODUCTS}
        assert won == {"gemm", "conv2d"}
    elif winner == bf16.MATMUL_CONV:  # 1x1 convolutions only (the ResNet's): the rest take fp32
        assert ways == ({winner, bf16.FP32_PRODUCTS} if config == "tiny-rn" else {bf16.FP32_PRODUCTS})
        assert won == ({"conv2d"} if config == "tiny-rn" else set())
        one_by_one = [key for key, way in bf16.decisions().items() if key[0] == "conv2d" and way == winner]
        assert all(key[3][2:] == (1, 1) for key in one_by_one)
    else:
        assert ways == {winner}
    assert calls
    kinds = {key[0] for key in bf16.decisions()}
    assert {"gemm", "conv2d", "attention"} <= kinds
    monkeypatch.setenv(bf16.ENV_VAR, winner)
    torch.testing.assert_close(measured, _encode(model, "image", images.bfloat16()), rtol=0, atol=0)
    assert _min_cosine(measured, _encode(reference, "image", images)) >= MIN_COSINE_TO_FP32


# torch before 2.6 does not trace function modes: where torch.compile breaks the graph, the mode runs
# at run time on real tensors (measuring there is measuring an ordinary call), so only from 2.6 on
# does compiling keep every product inside the graph.
COMPILE_TRACES_FUNCTION_MODES = _versions._release(torch.__version__) >= (2, 6)


@pytest.mark.slow  # torch.compile's first call: ~10 s on 2 busy cores
@pytest.mark.skipif(not COMPILE_TRACES_FUNCTION_MODES, reason="compile traces function modes from torch 2.6")
def test_tracing_and_compiling_never_measure(
    models: Dict[str, Dict[str, torch.nn.Module]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_timing(*args: Any) -> Tuple[float, float]:
        raise AssertionError("measured while tracing")

    monkeypatch.delenv(bf16.ENV_VAR, raising=False)
    monkeypatch.setattr(bf16, "_measure", no_timing)
    model = models["tiny-vit"]["bf16"]
    text = _inputs(model)["text"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace_module(model, {"encode_text": text}, check_trace=False).encode_text
        compiled = torch.compile(model.encode_text, backend="eager")
        out = compiled(text)
    assert bf16.decisions() == {}
    # unmeasured classes follow the oneDNN flag while tracing: the same numbers as forcing that way
    monkeypatch.setenv(bf16.ENV_VAR, bf16.FP32_PRODUCTS if not bf16.native_bf16_supported() else "torch")
    eager = _encode(model, "text", text)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    torch.testing.assert_close(traced(text), eager, rtol=0, atol=0)


@pytest.fixture
def no_widened() -> Iterator[None]:
    bf16.clear_widened_weights()
    yield
    bf16.clear_widened_weights()


@pytest.mark.parametrize("config", ["tiny-vit", "tiny-rn"])
def test_fp32_way_widens_each_weight_once_and_gives_the_same_numbers(
    config: str,
    fp32_products: None,
    no_widened: None,
    models: Dict[str, Dict[str, torch.nn.Module]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = models[config]["bf16"]
    images = _inputs(model)["image"].bfloat16()
    monkeypatch.setattr(bf16, "_widened_parameter", _counting(bf16._widened_parameter, calls := []))
    first = _encode(model, "image", images)
    widened = set(bf16._widened)
    assert widened and widened <= {id(p) for p in model.parameters()}  # model weights, kept once
    made = {key: entry[2] for key, entry in bf16._widened.items()}
    second = _encode(model, "image", images)
    assert all(bf16._widened[key][2] is copy for key, copy in made.items())  # reused, not made again
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    bf16.clear_widened_weights()  # without the copies: widened on the spot, the same numbers
    torch.testing.assert_close(first, _encode(model, "image", images), rtol=0, atol=0)
    assert calls


def _counting(func: Callable[..., Any], calls: List[int]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        calls.append(1)
        return func(*args)

    return wrapper


@pytest.mark.parametrize("way", [bf16.FP32_PRODUCTS, bf16.ONEDNN_FP32])
def test_a_changed_or_dead_weight_is_widened_again(
    way: str, no_widened: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _force(way, monkeypatch)
    kept = bf16._widened if way == bf16.FP32_PRODUCTS else bf16._packed
    tolerance = 0 if way == bf16.FP32_PRODUCTS else 2**-7  # oneDNN sums in another order: 1 bf16 ulp
    layer = torch.nn.Linear(16, 8).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(4, 16).bfloat16()

    def check(layer: torch.nn.Linear) -> None:  # against the fp32 way, widening now
        expected = F.linear(x.float(), layer.weight.float(), layer.bias.float()).bfloat16()
        torch.testing.assert_close(layer(x), expected, rtol=tolerance, atol=1e-6 if tolerance else 0)

    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        check(layer)
        with torch.no_grad():
            layer.weight.mul_(2)  # in place: a new version
        check(layer)
        layer.weight.data = torch.rand_like(layer.weight.data)  # new storage, same version
        check(layer)
    key = id(layer.weight)
    assert key in kept
    del layer
    assert key not in kept  # forgotten with its parameter


def test_training_weights_are_not_kept_widened(fp32_products: None, no_widened: None) -> None:
    layer = torch.nn.Linear(16, 8).to(torch.bfloat16)
    x = torch.randn(4, 16).bfloat16()
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        layer(x).float().sum().backward()
    assert layer.weight.grad is not None and not bf16._widened


def test_weights_made_in_inference_mode_are_widened_each_call(fp32_products: None, no_widened: None) -> None:
    # Inference tensors keep no version counter, so a kept copy could not see an in-place change.
    with torch.inference_mode():
        layer = torch.nn.Linear(16, 8).to(torch.bfloat16)
        x = torch.randn(4, 16).bfloat16()
        with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
            first = layer(x)
            layer.weight.mul_(2)
            second = layer(x)
    expected = F.linear(x.float(), layer.weight.float(), layer.bias.float()).bfloat16()
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    assert not torch.equal(first, second) and not bf16._widened


@pytest.mark.parametrize("config", ["tiny-vit", "tiny-rn"])
def test_onednn_way_packs_each_linear_and_conv_weight_once_and_matches_the_fp32_way(
    config: str,
    no_widened: None,
    models: Dict[str, Dict[str, torch.nn.Module]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _needs_onednn_packing(bf16.ONEDNN_FP32)
    model = models[config]["bf16"]
    images = _inputs(model)["image"].bfloat16()
    monkeypatch.setenv(bf16.ENV_VAR, bf16.FP32_PRODUCTS)
    fp32_way = _encode(model, "image", images)
    monkeypatch.setenv(bf16.ENV_VAR, bf16.ONEDNN_FP32)
    first = _encode(model, "image", images)
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    linear_weights |= {
        id(m.in_proj_weight) for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)
    }
    conv_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    packed = {key: entry[2] for key, entry in bf16._packed.items()}
    assert set(packed) <= linear_weights | conv_weights  # weights of products only, packed once
    assert set(packed) & linear_weights and set(packed) & conv_weights
    second = _encode(model, "image", images)
    assert all(bf16._packed[key][2] is copy for key, copy in packed.items())
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert _min_cosine(first, fp32_way) >= MIN_COSINE_TO_TORCH_BF16  # fp32 products summed in another order


def test_onednn_way_leaves_autograd_and_tracing_to_the_fp32_way(
    no_widened: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # oneDNN's fused linear has no backward, and packed weights are eager-only: both take the fp32 way
    _needs_onednn_packing(bf16.ONEDNN_FP32)
    monkeypatch.setenv(bf16.ENV_VAR, bf16.ONEDNN_FP32)
    layer = torch.nn.Linear(16, 8).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(4, 16).bfloat16().requires_grad_()
    expected = F.linear(x.detach().float(), layer.weight.float(), layer.bias.float()).bfloat16()
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        out = layer(x)  # prompt tuning on a frozen bf16 model: the input needs a gradient
        out.float().sum().backward()
        traced = torch.jit.trace(layer, x.detach(), check_trace=False)
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    torch.testing.assert_close(traced(x.detach()), expected, rtol=0, atol=0)
    assert not bf16._packed


def test_onednn_way_falls_back_where_packing_fails(
    no_widened: None, models: Dict[str, Dict[str, torch.nn.Module]], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = models["tiny-vit"]["bf16"]
    images = _inputs(model)["image"].bfloat16()
    monkeypatch.setenv(bf16.ENV_VAR, bf16.FP32_PRODUCTS)
    fp32_way = _encode(model, "image", images)
    monkeypatch.setenv(bf16.ENV_VAR, bf16.ONEDNN_FP32)
    monkeypatch.setitem(bf16._self_checks, "linear", False)  # as on a torch without mkldnn's private ops
    monkeypatch.setitem(bf16._self_checks, "conv2d", False)
    torch.testing.assert_close(_encode(model, "image", images), fp32_way, rtol=0, atol=0)
    assert not bf16._packed


def _conv_fp32_way(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """What the fp32 way gives: the bf16 operands widened, torch's fp32 convolution, rounded."""
    bias = None if conv.bias is None else conv.bias.float()
    return F.conv2d(
        x.float(), conv.weight.float(), bias, conv.stride, conv.padding, conv.dilation, conv.groups
    ).bfloat16()


def _frozen_conv(*args: Any, **kwargs: Any) -> torch.nn.Conv2d:
    torch.manual_seed(3)
    return torch.nn.Conv2d(*args, **kwargs).to(torch.bfloat16).requires_grad_(False)


@pytest.mark.parametrize("way", [bf16.ONEDNN_FP32, bf16.MATMUL_CONV])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_ways_match_the_fp32_way_in_torchs_layout(
    way: str, bias: bool, batch: int, no_widened: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _force(way, monkeypatch)
    one_by_one = _frozen_conv(24, 40, 1, bias=bias)
    strided = _frozen_conv(24, 16, 3, stride=2, padding=1, bias=bias)
    x = torch.randn(batch, 24, 9, 11).bfloat16()
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        outs = {"1x1": one_by_one(x), "3x3": strided(x)}
    for name, conv in (("1x1", one_by_one), ("3x3", strided)):
        out, expected = outs[name], _conv_fp32_way(conv, x)
        assert out.dtype == torch.bfloat16 and out.shape == expected.shape
        assert out.is_contiguous()  # torch's layout for a contiguous input, not oneDNN's channels-last
        # the same fp32 product summed in another order: at most one bf16 rounding step apart
        torch.testing.assert_close(out, expected, rtol=2**-7, atol=1e-6)
    packed, widened = set(bf16._packed), set(bf16._widened)
    if way == bf16.ONEDNN_FP32:  # both convolutions packed (it takes any plain conv2d)
        assert packed == {id(one_by_one.weight), id(strided.weight)}
    else:  # matmul takes the 1x1 one only; the 3x3 one went the fp32 way
        assert not packed and {id(one_by_one.weight), id(strided.weight)} <= widened
        torch.testing.assert_close(outs["3x3"], _conv_fp32_way(strided, x), rtol=0, atol=0)


@pytest.mark.parametrize("way", [bf16.ONEDNN_FP32, bf16.MATMUL_CONV])
def test_conv_ways_leave_other_layouts_and_options_to_the_fp32_way(
    way: str, no_widened: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _force(way, monkeypatch)
    conv = _frozen_conv(8, 8, 1)
    same = _frozen_conv(8, 8, 1, padding="same")
    three = _frozen_conv(8, 8, 3)  # stride 1, no padding, one group, but not 1x1
    x = torch.randn(2, 8, 5, 5).bfloat16()
    channels_last = x.contiguous(memory_format=torch.channels_last)
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        out_cl = conv(channels_last)  # torch keeps channels-last: so must we
        out_same = same(x)  # padding="same": a string, not a pair of ints
        out_three = three(x) if way == bf16.MATMUL_CONV else _conv_fp32_way(three, x)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, _conv_fp32_way(conv, channels_last), rtol=0, atol=0)
    expected = F.conv2d(x.float(), same.weight.float(), same.bias.float(), padding="same").bfloat16()
    torch.testing.assert_close(out_same, expected, rtol=0, atol=0)
    torch.testing.assert_close(out_three, _conv_fp32_way(three, x), rtol=0, atol=0)  # not a matmul
    assert not bf16._packed and {id(conv.weight), id(same.weight)} <= set(bf16._widened)


def test_matmul_way_keeps_autograd_and_onednn_leaves_it_to_the_fp32_way(
    no_widened: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_onednn_packing(bf16.ONEDNN_FP32)
    conv = _frozen_conv(6, 4, 1)
    x = torch.randn(2, 6, 3, 3).bfloat16()
    grads = {}
    for way in (bf16.FP32_PRODUCTS, bf16.ONEDNN_FP32, bf16.MATMUL_CONV):
        monkeypatch.setenv(bf16.ENV_VAR, way)
        leaf = x.clone().requires_grad_()
        with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
            conv(leaf).float().square().sum().backward()
        grads[way] = leaf.grad
    assert not bf16._packed  # oneDNN's convolution has no backward: the input needing one went fp32
    torch.testing.assert_close(grads[bf16.ONEDNN_FP32], grads[bf16.FP32_PRODUCTS], rtol=0, atol=0)
    torch.testing.assert_close(grads[bf16.MATMUL_CONV], grads[bf16.FP32_PRODUCTS], rtol=2**-7, atol=1e-5)


def test_a_packed_conv_weight_is_packed_again_for_other_options(
    no_widened: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_onednn_packing(bf16.ONEDNN_FP32)
    monkeypatch.setenv(bf16.ENV_VAR, bf16.ONEDNN_FP32)
    conv = _frozen_conv(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8).bfloat16()
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        conv(x)
        first = bf16._packed[id(conv.weight)][2]
        conv(x)
        assert bf16._packed[id(conv.weight)][2] is first  # reused
        conv.stride = (2, 2)  # the same weight in another convolution: packed for that one
        out = conv(x)
    assert bf16._packed[id(conv.weight)][2] is not first
    torch.testing.assert_close(out, _conv_fp32_way(conv, x), rtol=2**-7, atol=1e-6)


def test_the_real_measurement_times_every_conv_way_it_can_take() -> None:
    conv = _frozen_conv(32, 64, 1)
    x = torch.randn(1, 32, 14, 14).bfloat16()
    out, timed = _measured_call(conv, x)
    ways = [bf16.FP32_PRODUCTS, bf16.MATMUL_CONV, bf16.TORCH_KERNELS]
    if bf16._onednn_conv_packing():
        ways.append(bf16.ONEDNN_FP32)
    if bf16._bf16_conv_packing():
        ways.append(bf16.PACKED_BF16)
    assert timed == [sorted(ways)]
    assert set(bf16.decisions().values()) <= set(ways)
    torch.testing.assert_close(out, _conv_fp32_way(conv, x), rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("config", ["tiny-vit", "tiny-rn"])
def test_packed_way_packs_each_weight_once_and_matches_torchs_bf16_kernels(
    config: str,
    no_widened: None,
    models: Dict[str, Dict[str, torch.nn.Module]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _needs_onednn_packing(bf16.PACKED_BF16)
    model = models[config]["bf16"]
    images = _inputs(model)["image"].bfloat16()
    monkeypatch.setenv(bf16.ENV_VAR, bf16.TORCH_KERNELS)
    torchs = _encode(model, "image", images)
    monkeypatch.setenv(bf16.ENV_VAR, bf16.PACKED_BF16)
    first = _encode(model, "image", images)
    products = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    products |= {id(m.in_proj_weight) for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    packed = {key: entry[2] for key, entry in bf16._packed_bf16.items()}
    assert packed and set(packed) <= products and not bf16._packed and not bf16._widened
    assert all(copy.dtype == torch.bfloat16 for copy in packed.values())
    second = _encode(model, "image", images)
    assert all(bf16._packed_bf16[key][2] is copy for key, copy in packed.items())
    assert first.dtype == torch.bfloat16
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert _min_cosine(first, torchs) >= MIN_COSINE_TO_TORCH_BF16  # the same bf16 kernels, weights packed
    assert _min_cosine(first, _encode(models[config]["fp32"], "image", images.float())) >= MIN_COSINE_TO_FP32


@pytest.mark.parametrize("bias", [True, False])
def test_packed_way_gives_torchs_bf16_numbers_in_torchs_layout(
    bias: bool, no_widened: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _force(bf16.PACKED_BF16, monkeypatch)
    layer = torch.nn.Linear(24, 40, bias=bias).to(torch.bfloat16).requires_grad_(False)
    strided = _frozen_conv(24, 16, 3, stride=2, padding=1, bias=bias)
    x, images = torch.randn(5, 3, 24).bfloat16(), torch.randn(2, 24, 9, 11).bfloat16()
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        out, conv_out = layer(x), strided(images)
    assert out.dtype == conv_out.dtype == torch.bfloat16 and conv_out.is_contiguous()
    # torch's bf16 kernels: fp32 sums rounded once; oneDNN may sum in another order (one bf16 step)
    torch.testing.assert_close(out, layer(x), rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(conv_out, strided(images), rtol=2**-7, atol=1e-6)
    assert set(bf16._packed_bf16) == {id(layer.weight), id(strided.weight)}


def test_packed_way_under_autocast_packs_rounded_weights_and_matches_torch(
    no_widened: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _force(bf16.PACKED_BF16, monkeypatch)
    layer = torch.nn.Linear(32, 16).requires_grad_(False)  # fp32 weights: autocast rounds them
    x = torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with bf16.bf16_compute(torch.device("cpu"), torch.float32):
            ours = layer(x)
        torchs = layer(x)
    assert ours.dtype == torchs.dtype == torch.bfloat16
    torch.testing.assert_close(ours, torchs, rtol=2**-7, atol=1e-6)
    (copy,) = [entry[2] for entry in bf16._packed_bf16.values()]
    assert copy.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32  # the model is unchanged


def test_packed_way_leaves_autograd_tracing_and_failed_checks_to_torchs_kernels(
    no_widened: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _force(bf16.PACKED_BF16, monkeypatch)
    layer = torch.nn.Linear(16, 8).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(4, 16).bfloat16()
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        wanting = x.clone().requires_grad_()
        out = layer(wanting)  # oneDNN's fused linear has no backward: torch's kernels
        out.float().sum().backward()
        traced = torch.jit.trace(layer, x, check_trace=False)  # packed weights are eager-only
    assert wanting.grad is not None and wanting.grad.abs().sum() > 0
    torch.testing.assert_close(out.detach(), layer(x), rtol=0, atol=0)
    torch.testing.assert_close(traced(x), layer(x), rtol=0, atol=0)
    assert not bf16._packed_bf16
    monkeypatch.setitem(bf16._self_checks, "linear-bf16", False)  # a torch without the private ops
    with bf16.bf16_compute(torch.device("cpu"), torch.bfloat16):
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    assert not bf16._packed_bf16


def test_torchs_kernels_are_warmed_up_before_timing_where_onednn_builds_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # oneDNN builds its bf16 kernels on first use (5-10 ms): the first run must not be the timed one
    order: List[str] = []

    def measure(runs: Dict[str, Callable[[], Any]]) -> Dict[str, float]:
        order.append("measure")
        return {way: 1.0 if way == bf16.TORCH_KERNELS else 2.0 for way in runs}

    calls: List[int] = []
    real_torch = bf16._run_torch

    def counting(*args: Any) -> Any:
        order.append("torch")
        return real_torch(*args)

    monkeypatch.delenv(bf16.ENV_VAR, raising=False)
    monkeypatch.setattr(bf16, "_measure", measure)
    monkeypatch.setattr(bf16, "_run_torch", counting)
    for native in (True, False):
        order.clear()
        bf16.clear_decisions()
        monkeypatch.setattr(bf16, "native_bf16_supported", lambda native=native: native)
        _linear_in_context(*_linear_operands(8))
        calls.append(order.index("measure"))
    assert calls == [1, 0]  # one untimed run before the timing with native kernels, none without


@pytest.mark.parametrize("winner", [bf16.TORCH_KERNELS, bf16.FP32_PRODUCTS])
def test_a_call_with_nothing_to_route_runs_without_the_mode_next_time(
    winner: str, models: Dict[str, Dict[str, torch.nn.Module]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(bf16.ENV_VAR, raising=False)
    monkeypatch.setattr(bf16, "_measure", _fake_timer(winner, []))
    entered: List[int] = []

    class Spy(bf16._Float32Products):
        def __enter__(self) -> Any:
            entered.append(1)
            return super().__enter__()

    monkeypatch.setattr(bf16, "_Float32Products", Spy)
    model = models["tiny-vit"]["bf16"]
    images = _inputs(model)["image"].bfloat16()
    first = _encode(model, "image", images)
    second = _encode(model, "image", images)
    plain = winner == bf16.TORCH_KERNELS  # every product went torch's way: the mode only cost dispatch
    assert len(entered) == (1 if plain else 2)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    _encode(model, "image", images[:2])  # another input shape: measured and routed in the mode again
    assert len(entered) == (2 if plain else 3)
    bf16.clear_decisions()  # forgetting the decisions forgets the plain calls too
    _encode(model, "image", images)
    assert len(entered) == (3 if plain else 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 weights: the mode only under autocast
        assert isinstance(bf16.bf16_compute(torch.device("cpu"), torch.float32, model.visual, images), Spy)
    assert not isinstance(bf16.bf16_compute(torch.device("cpu"), torch.float32, model.visual, images), Spy)
