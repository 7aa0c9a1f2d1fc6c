from tests.conftest import run_cli


def test_layers_olmo2_tiny_segments_and_last():
    rc, out, err = run_cli("layers", "random:olmo2-tiny", "--band", "seg2-4/5")
    assert rc == 0, err
    assert "6 blocks" in out and "band 'seg2-4/5': 3 blocks, 1..3" in out
    rc, out, _ = run_cli("layers", "random:olmo2-tiny", "--band", "last:2")
    assert rc == 0 and "2 blocks, 4..5" in out
    assert "self_attn.q_proj" in out and "mlp.down_proj" in out


def test_layers_bad_band_and_unknown_model_are_one_line_exit_2():
    rc, out, err = run_cli("layers", "random:olmo2-tiny", "--band", "3-9")
    assert rc == 2 and err.count("\n") == 1 and "selects block 6" in err
    rc, out, err = run_cli("layers", "no/such-model")
    assert rc == 2 and "no/such-model" in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    rc, _, err = run_cli("layers")
    assert rc == 2 and err.count("\n") == 1


def test_layers_embedded_default():
    rc, out, err = run_cli("layers", "smollm2-135m", "--band", "0.2:0.8")
    assert rc == 0, err
    assert "30 blocks" in out and "18 blocks, 6..23" in out


def test_layers_names_a_selection_strategy_as_such_in_one_line():
    for spec in ("spectrum:50", "lisa:2/20", "cka-select:0.5", "auto"):
        rc, _, err = run_cli("layers", "random:olmo2-tiny", "--band", spec)
        assert rc == 2 and err.count("\n") == 1 and "selection strategy" in err, (spec, err)
