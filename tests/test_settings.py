import subprocess
import sys

import pytest

from gateway.settings import Settings, apply_process_env, build_parser


def test_defaults_match_kserve():
    s = Settings.from_args([], env={})
    assert (s.model_name, s.http_port, s.grpc_port, s.dtype, s.backend) == ("model", 8080, 8081, "auto", "auto")
    assert s.model_id is None and s.model_dir is None and s.trust_remote_code is False


@pytest.mark.parametrize(
    "argv",
    [
        ["--model_name", "m", "--max_model_len", "128", "--trust_remote_code"],
        ["--model-name", "m", "--max-model-len", "128", "--trust-remote-code"],
        ["--model_name=m", "--max_length=128", "--trust_remote_code=true"],
        ["--model-name=m", "--max-length", "128", "--trust-remote-code", "1"],
    ],
)
def test_snake_and_kebab_spellings_and_aliases(argv):
    s = Settings.from_args(argv, env={})
    assert (s.model_name, s.max_model_len, s.trust_remote_code) == ("m", 128, True)


def test_env_overrides_default_and_cli_overrides_env():
    env = {"HF_GATEWAY_HTTP_PORT": "9000", "HF_GATEWAY_DISABLE_LOG_REQUESTS": "true", "HF_GATEWAY_MODEL_NAME": "envname"}
    s = Settings.from_args([], env=env)
    assert (s.http_port, s.disable_log_requests, s.model_name) == (9000, True, "envname")
    s = Settings.from_args(["--http_port", "9001", "--disable_log_requests=false"], env=env)
    assert (s.http_port, s.disable_log_requests) == (9001, False)


def test_bool_flag_false_value():
    assert Settings.from_args(["--trust_remote_code=false"], env={}).trust_remote_code is False


def test_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        Settings.from_args(["--model_name", "m", "--no_such_flag", "1"], env={})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown flag(s): --no_such_flag" in err and "--help" in err


def test_prefixes_are_not_accepted_as_abbreviations():
    with pytest.raises(SystemExit):
        Settings.from_args(["--model", "m"], env={})


def test_invalid_choice_and_type(capsys):
    with pytest.raises(SystemExit):
        Settings.from_args(["--dtype", "int3"], env={})
    with pytest.raises(SystemExit):
        Settings.from_args(["--http_port", "eighty"], env={})


def test_invalid_env_value_names_the_variable(capsys):
    with pytest.raises(SystemExit):
        Settings.from_args([], env={"HF_GATEWAY_HTTP_PORT": "x"})
    assert "HF_GATEWAY_HTTP_PORT" in capsys.readouterr().err


def test_every_flag_has_help_and_both_spellings():
    parser = build_parser(env={})
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 10, action.dest
        if "_" in action.dest:
            assert f"--{action.dest}" in action.option_strings
            assert f"--{action.dest.replace('_', '-')}" in action.option_strings


def test_process_env_defaults_do_not_override_user_values():
    env = {"HF_HUB_DISABLE_TELEMETRY": "0"}
    apply_process_env(env)
    assert env == {"HF_HUB_DISABLE_TELEMETRY": "0", "SAFETENSORS_FAST_GPU": "1"}


def test_importing_does_not_parse_argv():
    code = "import gateway.settings, gateway.server; print('ok')"
    out = subprocess.run([sys.executable, "-c", code, "--bogus-flag"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_version_names_the_package_and_the_engines_without_starting_anything():
    out = subprocess.run([sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.startswith("hf-gateway 0.") and "Python 3." in first
    assert second.startswith("engines: torch ") and "transformers " in second and "vLLM " in second and "OpenVINO GenAI " in second


def test_did_you_mean_knows_typos_and_other_servers_names():
    from gateway.settings import did_you_mean

    assert did_you_mean("--port") == "--http_port"  # vLLM's, uvicorn's
    assert did_you_mean("--model") == "--model_id"
    assert did_you_mean("--http-prot") == "--http_port"
    assert did_you_mean("--max_num_seq=3") == "--max_num_seqs"
    assert did_you_mean("--frobnicate") is None


def test_an_unknown_flag_that_cannot_be_vllms_fails_before_any_model_work():
    """With --backend huggingface no flag can be vLLM's: exit 2 with a suggestion, from the flag
    check alone (the model is never looked for: a missing --model_dir would be a different error)."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--backend", "huggingface", "--model_dir", "/nonexistent", "--port", "9"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "unknown flag(s): --port 9 (did you mean --http_port?)" in out.stderr
    assert "/nonexistent" not in out.stderr and "Traceback" not in out.stderr
