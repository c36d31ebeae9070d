"""Progress callbacks (qdbg.progress): the engine, the requantizer and synth report what they do, in
order, ending at the total; the CLI draws them only when stderr is a terminal."""

from __future__ import annotations

import numpy as np

from qdbg.engine.forward import Engine
from qdbg.model import Model


def recorder():
    calls: list[tuple[str, int, int | None]] = []
    return calls, lambda what, done, total: calls.append((what, done, total))


def test_logits_reports_every_layer_of_every_pass(synth_model):
    m = Model(synth_model("llama", "Q8_0"))
    calls, cb = recorder()
    with_cb = Engine(m).logits([1, 5, 9, 12], decode=2, progress=cb)  # passes: [1, 5], [9], [12]
    n = m.config.n_layer
    assert [c[1] for c in calls] == list(range(1, 3 * n + 1)) and {c[2] for c in calls} == {3 * n}
    assert calls[0][0] == f"pass 1/3, layer 1/{n}" and calls[-1][0] == f"pass 3/3, layer {n}/{n}"
    np.testing.assert_array_equal(with_cb, Engine(m).logits([1, 5, 9, 12], decode=2))


def test_requantize_reports_each_tensor(synth_model, tmp_path):
    from qdbg.requant import requantize

    src = synth_model("llama", "F16")
    calls, cb = recorder()
    requantize(src, tmp_path / "q.gguf", "Q8_0", progress=cb)
    names = list(Model(src).tensors)
    assert [c[1] for c in calls] == list(range(len(names))) and {c[2] for c in calls} == {len(names)}
    assert [c[0].split(" -> ")[0] for c in calls] == names


def test_synth_family_counts_tensors_over_all_files(tmp_path):
    from qdbg import synth

    spec = synth.SynthSpec(arch="llama", n_layer=1, n_embd=64, n_ff=128, n_head=2, n_head_kv=1, n_vocab=400)
    calls, cb = recorder()
    synth.write_family(spec, tmp_path, ["F16", "Q8_0"], progress=cb)
    n = len(synth.tensor_shapes(spec))
    counted = [c for c in calls if c[2] is not None]
    assert calls[0] == ("generating weights", 0, None)
    assert [c[1] for c in counted] == list(range(2 * n)) and {c[2] for c in counted} == {2 * n}
    assert counted[0][0].startswith("F16: ") and counted[-1][0].startswith("Q8_0: ")


def test_cli_bar_only_on_a_terminal(monkeypatch):
    import io
    import sys

    from qdbg.cli_progress import progress_bar

    with progress_bar("x") as cb:  # pytest's stderr is not a terminal
        assert cb is None

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    with progress_bar("work") as cb:
        assert callable(cb)
        cb("layer 1/2", 1, 2)
        cb("layer 2/2", 2, 2)
    assert "work: layer 2/2" in fake.getvalue() and "2/2" in fake.getvalue()
