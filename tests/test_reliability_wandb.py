"""Three W&B-offline runs in one process (as a sweep does): no leaked file handles, threads
or W&B runs; the W&B run lives in the run dir; no network; no secrets in any saved file."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading

import pytest

from test_reliability_resume import TINY, run_in_process

SENTINEL = "sentinel-secret-4f1c9a"


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Run 3 tiny trainings in this process with W&B offline, secrets set and the network
    refused; record open fds, threads and wandb.run after each."""
    import wandb

    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_API_KEY", SENTINEL)
    mp.setenv("HF_TOKEN", SENTINEL)
    remote, connect = [], socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not _is_loopback(host):
            remote.append(address)
            raise OSError("test: network access refused")
        return connect(sock, address)

    mp.setattr(socket.socket, "connect", loopback_only)
    root = tmp_path_factory.mktemp("soak")
    record = []
    try:
        for i in range(3):
            run_in_process(["logger=default", *TINY, "trainer.max_epochs=1", f"task_name=soak{i}"],
                           root / str(i))
            record.append({"fds": len(os.listdir("/proc/self/fd")),
                           "threads": threading.active_count(), "wandb_run": wandb.run})
    finally:
        mp.undo()
    return root, record, remote


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.mark.slow
def test_consecutive_runs_leak_no_file_handles_threads_or_wandb_runs(three_runs):
    _, record, _ = three_runs
    assert [r["wandb_run"] for r in record] == [None, None, None]
    # the first run warms up (W&B service, worker pools); later runs must not add more
    assert record[2]["fds"] <= record[1]["fds"], record
    assert record[2]["threads"] <= record[1]["threads"], record


@pytest.mark.slow
def test_wandb_offline_writes_under_the_run_dir_and_never_reaches_the_network(three_runs):
    root, _, remote = three_runs
    for i in range(3):
        runs = list((root / str(i) / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and any(runs[0].rglob("*.wandb")), runs
    assert remote == []


@pytest.mark.slow
def test_secrets_never_reach_configs_logs_or_checkpoints(three_runs):
    root, _, _ = three_runs
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.suffix == ".wandb" for p in files)
    leaking = [str(p.relative_to(root)) for p in files if SENTINEL.encode() in p.read_bytes()]
    assert leaking == []


def test_wandb_set_up_but_unreachable_logs_offline_instead_of_failing_the_run(tmp_path, monkeypatch):
    """An API key in the environment (mode auto -> online) on a node without network: W&B
    gave up after 90 s and the run died with CommError; it now goes on offline, saying so."""
    import wandb

    from cvt_lab.loggers import wandb_logger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", SENTINEL * 3)
    init = wandb.init

    def no_server(**kwargs):  # what wandb.init raises when it cannot reach its server
        if kwargs.get("mode") == "online":
            raise wandb.errors.CommError("Failed to get resume status for run x: context "
                                         "deadline exceeded")
        return init(**kwargs)

    monkeypatch.setattr(wandb, "init", no_server)
    with pytest.warns(UserWarning) as warned:
        logger = wandb_logger(save_dir=str(tmp_path), project="cvt-lab", name="t")
    try:
        assert logger.experiment.offline
        assert logger.experiment.dir.startswith(str(tmp_path / "wandb" / "offline-run-"))
    finally:
        wandb.finish()
    (message,) = [str(w.message) for w in warned if "W&B" in str(w.message)]
    assert message == (
        "W&B could not start an online run (CommError: Failed to get resume status for run x: "
        f"context deadline exceeded): logging offline to {tmp_path}/wandb/offline-run-* instead; "
        "upload it later with `wandb sync <that folder>`. Set WANDB_MODE=offline (or "
        "logger.wandb.mode=offline) to skip the attempt")
    assert SENTINEL not in message


def test_the_summary_names_no_wandb_folder_when_wandb_is_disabled(tmp_path, monkeypatch, capsys):
    """WANDB_MODE=disabled writes nothing, yet the summary listed a W&B folder under /tmp."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_in_process(["logger=default", *TINY, "trainer.max_epochs=1", "test=false"], tmp_path)
    outputs = capsys.readouterr().out.split("Outputs\n", 1)[1]
    assert "csv" in outputs and "wandb" not in outputs, outputs


HOST = "wandb.corp.example"  # a self-hosted W&B server


@pytest.mark.parametrize("setup, expected", [
    ({"settings": HOST, "netrc": HOST}, True),      # `wandb login --host https://<host>`
    ({"env": HOST, "netrc": HOST}, True),           # WANDB_BASE_URL and a netrc entry for it
    ({"netrc": "api.wandb.ai", "NETRC": True}, True),  # a netrc where $NETRC says
    ({"settings": HOST, "netrc": "api.wandb.ai"}, False),  # no key for the server in use
])
def test_wandb_counts_as_set_up_exactly_when_wandb_itself_has_a_key(tmp_path, monkeypatch, setup,
                                                                    expected):
    """`wandb login --host` to a self-hosted server (its key in ~/.netrc under that host) ran
    offline, and a key for api.wandb.ai alone chose online for a server it does not open:
    only ~/.netrc's api.wandb.ai entry was looked at."""
    from cvt_lab.loggers import wandb_configured

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    netrc = tmp_path / ("elsewhere/netrc" if setup.get("NETRC") else ".netrc")
    netrc.parent.mkdir(parents=True, exist_ok=True)
    netrc.write_text(f"machine {setup['netrc']}\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    if setup.get("NETRC"):
        monkeypatch.setenv("NETRC", str(netrc))
    if "settings" in setup:
        (tmp_path / ".config/wandb").mkdir(parents=True)
        (tmp_path / ".config/wandb/settings").write_text(
            f"[default]\nbase_url = https://{setup['settings']}\n")
    if "env" in setup:
        monkeypatch.setenv("WANDB_BASE_URL", f"https://{setup['env']}")
    assert wandb_configured() is expected
