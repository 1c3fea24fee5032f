"""The launchers (launch/gpu_hosts.sh, launch/tpu_vm.sh), the accelerator extras and the Makefile's
set-up logic. Fast and without jax: the processes started are plain Python, ssh and gcloud are
fakes on PATH, and nothing is downloaded."""

import importlib.metadata
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_HOSTS = ROOT / "launch" / "gpu_hosts.sh"
TPU_VM = ROOT / "launch" / "tpu_vm.sh"
VENV = Path(sys.prefix)  # the venv running the tests: what localhost processes should use

# A process started by the launcher: reports its environment, then acts on its JAX_PROCESS_ID.
WORKER = r'''
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
i = int(os.environ["JAX_PROCESS_ID"])
print(f"id={i} num={os.environ['JAX_NUM_PROCESSES']} coord={os.environ['JAX_COORDINATOR_ADDRESS']}"
      f" extra={os.environ.get('EXTRA', '-')} cwd={os.getcwd()} prefix={sys.prefix} args={sys.argv[2:]}")
print(f"stderr of {i}", file=sys.stderr)
mode = sys.argv[2] if len(sys.argv) > 2 else "ok"
if mode == "fail":
    (out / f"pid.{i}").write_text(str(os.getpid()))
    if i == 0:  # fail once the sleeper is up
        t = time.time()
        while not (out / "pid.1").exists() and time.time() - t < 20:
            time.sleep(0.05)
        sys.exit(3)
    time.sleep(120)
elif mode == "sleep":
    (out / f"pid.{i}").write_text(str(os.getpid()))
    time.sleep(120)
'''


# A terminal's shell starts a program with SIGINT at its default. A suite started in the background
# of a script (`nohup make test &`) has it ignored, and bash cannot trap a signal that was ignored
# when it started (`trap ... INT` is silently a no-op), so the launcher is started through this.
AS_FROM_A_TERMINAL = (sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "os.execv(sys.argv[1], sys.argv[1:])")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSJAX_") and k != "VIRTUAL_ENV"}
    env.update(extra)
    return env


def _run(args, env=None, timeout=60):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else _env(VIRTUAL_ENV=str(VENV)))


def _hosts(tmp_path, text, name="hosts"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _gone(pid: int) -> bool:
    """The process has exited (a zombie left for init to reap counts as gone)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return True
    st = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout
    return not st.strip() or st.strip().startswith("Z")


def _wait_gone(pid: int, timeout=10.0) -> bool:
    t = time.time()
    while time.time() - t < timeout:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


def _local_line(i, n, cmd, coord="localhost:12355", extra="", venv=VENV):
    q = shlex.quote
    return (f"cd {q(str(ROOT))} && exec env PATH={q(str(venv) + '/bin')}:\"$PATH\" PYTHONUNBUFFERED=1 "
            f"JAX_COORDINATOR_ADDRESS={q(coord)} JAX_NUM_PROCESSES={n} JAX_PROCESS_ID={i}"
            f"{' ' + extra if extra else ''} {shlex.join(cmd)}")


def _remote_line(host, i, n, cmd, coord, extra="", cd="~/gsjax"):
    remote = (f"cd {cd} && exec env PATH=\"$PWD/.venv/bin:$PATH\" PYTHONUNBUFFERED=1 "
              f"JAX_COORDINATOR_ADDRESS={shlex.quote(coord)} JAX_NUM_PROCESSES={n} JAX_PROCESS_ID={i}"
              f"{' ' + extra if extra else ''} {shlex.join(cmd)}")
    return f"ssh -tt {shlex.quote(host)} {shlex.quote(remote)}"


# ---------------------------------------------------------------------------------- gpu_hosts.sh

CMD = ["python", "-m", "gsjax.train", "--config=configs/grpo.py", "--config.note=a b 'c' $HOME"]


def test_gpu_hosts_dry_run_remote_exact(tmp_path):
    hosts = _hosts(tmp_path, "gpu0\n\n# a comment\nme@gpu1   XLA_FLAGS='--a=1 --b=2' NCCL_DEBUG=INFO  # trailing\n"
                             "gpu2 CUDA_VISIBLE_DEVICES=0\n")
    r = _run([GPU_HOSTS, "--dry-run", hosts, "--", *CMD])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        _remote_line("gpu0", 0, 3, CMD, "gpu0:12355"),
        _remote_line("me@gpu1", 1, 3, CMD, "gpu0:12355", "'XLA_FLAGS=--a=1 --b=2' NCCL_DEBUG=INFO"),
        _remote_line("gpu2", 2, 3, CMD, "gpu0:12355", "CUDA_VISIBLE_DEVICES=0"),
    ]
    # what the remote shell gets is the command with every argument intact
    ssh_argv = shlex.split(r.stdout.splitlines()[1])
    assert ssh_argv[:3] == ["ssh", "-tt", "me@gpu1"] and len(ssh_argv) == 4
    remote = shlex.split(ssh_argv[3].split(" && ", 1)[1])
    assert remote[:2] == ["exec", "env"]
    assert "JAX_PROCESS_ID=1" in remote and "XLA_FLAGS=--a=1 --b=2" in remote
    assert remote[-len(CMD):] == CMD


def test_gpu_hosts_dry_run_port_coordinator_and_dir(tmp_path):
    hosts = _hosts(tmp_path, "me@gpu0\ngpu1\n")
    env = _env(GSJAX_COORDINATOR_PORT="2222", GSJAX_REMOTE_DIR="~/my dir")
    r = _run([GPU_HOSTS, "--dry-run", hosts, "true"], env=env)  # the `--` is optional
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        _remote_line("me@gpu0", 0, 2, ["true"], "gpu0:2222", cd="~/'my dir'"),
        _remote_line("gpu1", 1, 2, ["true"], "gpu0:2222", cd="~/'my dir'"),
    ]


def test_gpu_hosts_dry_run_localhost_exact(tmp_path):
    hosts = _hosts(tmp_path, "localhost XLA_FLAGS=--xla_force_host_platform_device_count=4\n127.0.0.1\n")
    cmd = ["python", "-c", "print('hi there')"]
    r = _run([GPU_HOSTS, "--dry-run", hosts, "--", *cmd])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        _local_line(0, 2, cmd, extra="XLA_FLAGS=--xla_force_host_platform_device_count=4"),
        _local_line(1, 2, cmd),
    ]
    # without an active venv: the checkout's .venv
    r = _run([GPU_HOSTS, "--dry-run", hosts, "--", *cmd], env=_env())
    assert r.stdout.splitlines()[1] == _local_line(1, 2, cmd, venv=ROOT / ".venv")


def test_gpu_hosts_dry_run_lines_run_as_printed(tmp_path):
    """A printed localhost line pasted into a shell starts that process."""
    hosts = _hosts(tmp_path, "localhost EXTRA='x y'\nlocalhost\n")
    (tmp_path / "w.py").write_text(WORKER)
    r = _run([GPU_HOSTS, "--dry-run", hosts, "--", "python", tmp_path / "w.py", tmp_path, "ok", "arg with space"])
    line = r.stdout.splitlines()[0]
    p = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"id=0 num=2 coord=localhost:12355 extra=x y cwd={ROOT} prefix={VENV} args=['ok', 'arg with space']" in p.stdout


def test_gpu_hosts_localhost_starts_processes_with_prefixed_output(tmp_path):
    hosts = _hosts(tmp_path, "localhost EXTRA='x y'\nlocalhost\n")
    (tmp_path / "w.py").write_text(WORKER)
    r = _run([GPU_HOSTS, hosts, "--", "python", tmp_path / "w.py", tmp_path, "ok", "it's a b"])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    for i, extra in ((0, "x y"), (1, "-")):
        assert (f"[p{i}] id={i} num=2 coord=localhost:12355 extra={extra} cwd={ROOT} prefix={VENV} "
                f"args=['ok', \"it's a b\"]") in lines
        assert f"[p{i}] stderr of {i}" in lines  # stderr comes back too, prefixed
    assert all(re.match(r"\[p[01]\] ", l) for l in lines), lines


def test_gpu_hosts_failure_kills_the_others(tmp_path):
    hosts = _hosts(tmp_path, "localhost\nlocalhost\n")
    (tmp_path / "w.py").write_text(WORKER)
    t = time.time()
    r = _run([GPU_HOSTS, hosts, "--", "python", tmp_path / "w.py", tmp_path, "fail"], timeout=60)
    elapsed = time.time() - t
    assert r.returncode == 3, r.stdout + r.stderr
    assert elapsed < 15, elapsed  # the sleeper (120 s) was stopped, not waited for
    assert "process 0 (localhost" in r.stderr and "status 3" in r.stderr
    assert "[p0] id=0" in r.stdout and "[p1] id=1" in r.stdout
    assert _wait_gone(int((tmp_path / "pid.1").read_text()))


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_gpu_hosts_signal_stops_all(tmp_path, sig, status):
    hosts = _hosts(tmp_path, "localhost\nlocalhost\n")
    (tmp_path / "w.py").write_text(WORKER)
    p = subprocess.Popen([*AS_FROM_A_TERMINAL, str(GPU_HOSTS), str(hosts), "--", "python", str(tmp_path / "w.py"),
                          str(tmp_path), "sleep"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(VIRTUAL_ENV=str(VENV)), start_new_session=True)
    try:
        t = time.time()
        while not all((tmp_path / f"pid.{i}").exists() for i in (0, 1)) and time.time() - t < 30:
            time.sleep(0.05)
        pids = [int((tmp_path / f"pid.{i}").read_text()) for i in (0, 1)]
        # SIGINT as a terminal's Ctrl-C sends it: to the launcher's process group
        os.killpg(p.pid, sig) if sig == signal.SIGINT else p.send_signal(sig)
        # What is checked is that everything stops, not how fast: the launcher's grace is counted in
        # 0.1 s rounds, which take longer on a loaded machine. (Its waits are the `read` builtin: with
        # an external `sleep` in its group, bash dropped the group's SIGINT about 1 run in 300.)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == status, out + err
    assert "stopping all 2 processes" in err
    assert all(_wait_gone(pid) for pid in pids)


def test_gpu_hosts_remote_through_ssh(tmp_path):
    """Remote lines, run through a fake ssh that executes the command in a fake home's shell."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    (home / "gsjax" / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    fake_python = home / "gsjax" / ".venv" / "bin" / "python"
    fake_python.write_text(f"#!/bin/sh\necho remote-venv-python\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    fake_python.chmod(0o755)
    ssh = bin_dir / "ssh"
    ssh.write_text('#!/bin/sh\n[ "$1" = -tt ] || exit 99\nshift\necho "$1" >> "$FAKE_SSH_LOG"\nshift\n'
                   'HOME="$FAKE_HOME" exec sh -c "$*"\n')
    ssh.chmod(0o755)
    (tmp_path / "w.py").write_text(WORKER)
    hosts = _hosts(tmp_path, "gpu0 EXTRA='x y'\nme@gpu1\n")
    env = _env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_HOME=str(home), FAKE_SSH_LOG=str(tmp_path / "ssh.log"))
    r = _run([GPU_HOSTS, hosts, "--", "python", tmp_path / "w.py", tmp_path, "ok", "it's a b"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted((tmp_path / "ssh.log").read_text().split()) == ["gpu0", "me@gpu1"]
    assert "[p0] remote-venv-python" in r.stdout.splitlines()
    assert (f"[p1] id=1 num=2 coord=gpu0:12355 extra=- cwd={home / 'gsjax'} prefix={sys.prefix} "
            f"args=['ok', \"it's a b\"]") in r.stdout.splitlines()
    assert "[p0] id=0 num=2 coord=gpu0:12355 extra=x y" in r.stdout


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ("", "lists no hosts"),
    ("\n   \n# only comments\n", "lists no hosts"),
    ("gpu0 notanassignment\n", "line 1: 'notanassignment' is not NAME=VALUE"),
    ("gpu0\ngpu1 'unbalanced\n", "line 2: cannot split"),
    ("-oProxyCommand=x\n", "is not a host name"),
    ("localhost\ngpu1\n", "GSJAX_COORDINATOR_HOST"),
])
def test_gpu_hosts_bad_hosts_file(tmp_path, content, message):
    hosts = tmp_path / "hosts"
    if content is not None:
        hosts.write_text(content)
    for dry in ([], ["--dry-run"]):
        r = _run([GPU_HOSTS, *dry, hosts, "--", "true"], timeout=20)
        assert r.returncode == 2, r.stdout + r.stderr
        assert message in r.stderr and r.stdout == ""


def test_gpu_hosts_usage_errors(tmp_path):
    hosts = _hosts(tmp_path, "localhost\n")
    for args in ([], [hosts], [hosts, "--"], ["--bogus", hosts, "--", "true"]):
        r = _run([GPU_HOSTS, *args], timeout=20)
        assert r.returncode == 2 and "usage:" in r.stderr, (args, r.stderr)


# ------------------------------------------------------------------------------------ tpu_vm.sh

def _worker_cmd(cmd):
    return ("cd ~/gsjax && { test -x .venv/bin/python || python3.11 -m venv .venv; }"
            " && { test .venv/.installed-tpu-vm -nt pyproject.toml || { .venv/bin/python -m pip install"
            " --quiet -e '.[tpu]' && touch .venv/.installed-tpu-vm; }; }"
            f" && exec env PATH=\"$PWD/.venv/bin:$PATH\" PYTHONUNBUFFERED=1 GSJAX_DISTRIBUTED=auto {shlex.join(cmd)}")


def _fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    g = bin_dir / "gcloud"
    g.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$FAKE_GCLOUD_LOG"\n')
    g.chmod(0o755)
    log = tmp_path / "gcloud.log"
    return _env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GCLOUD_LOG=str(log)), log


def test_tpu_vm_dry_run_exact(tmp_path):
    env, log = _fake_gcloud(tmp_path)
    cmd = ["python", "-m", "gsjax.sample", "--config=configs/sample.py:qwen3_8b", "--config.prompt=a cat's hat"]
    r = _run([TPU_VM, "--dry-run", "my-tpu", "us-east5-a", "--", *cmd], env=env)
    assert r.returncode == 0, r.stderr
    worker = _worker_cmd(cmd)
    gcloud = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-east5-a", "--worker=all",
              "--command", worker]
    assert r.stdout.splitlines() == ["# from here:", shlex.join(gcloud), "# on every worker:", worker]
    assert not log.exists()  # --dry-run calls nothing
    # the worker command runs in a POSIX sh (the fake worker is installed: no pip)
    home = tmp_path / "home"
    (home / "gsjax" / ".venv" / "bin").mkdir(parents=True)
    (home / "gsjax" / "pyproject.toml").write_text("")
    os.symlink(sys.executable, home / "gsjax" / ".venv" / "bin" / "python")
    stamp = home / "gsjax" / ".venv" / ".installed-tpu-vm"
    stamp.write_text("")
    os.utime(stamp, (time.time() + 3600,) * 2)
    w = _worker_cmd(["python", "-c", "import sys, os; print(sys.argv[1:], os.getcwd())", "a b", "it's"])
    p = subprocess.run(["sh", "-c", w], capture_output=True, text=True, timeout=60, env=_env(HOME=str(home)))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"['a b', \"it's\"] {home / 'gsjax'}"


def test_tpu_vm_calls_gcloud_with_that_command(tmp_path):
    env, log = _fake_gcloud(tmp_path)
    env["GSJAX_GCLOUD_FLAGS"] = "--project=p1 --internal-ip"
    cmd = ["python", "-m", "gsjax.train", "--config=configs/grpo.py:qwen3_8b", "--config.x=a b"]
    r = _run([TPU_VM, "tpu1", "europe-west4-a", "--", *cmd], env=env)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [
        "compute", "tpus", "tpu-vm", "ssh", "tpu1", "--zone", "europe-west4-a", "--worker=all",
        "--project=p1", "--internal-ip", "--command", _worker_cmd(cmd)]


def test_tpu_vm_usage_errors(tmp_path):
    env, log = _fake_gcloud(tmp_path)
    for args in ([], ["tpu1"], ["tpu1", "--", "true"], ["tpu1", "zone"], ["tpu1", "zone", "--"]):
        r = _run([TPU_VM, "--dry-run", *args], env=env, timeout=20)
        assert r.returncode == 2 and "usage:" in r.stderr, (args, r.stderr)
    assert not log.exists()


# ------------------------------------------------------------------------------- extras, Makefile

def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(reqs, name):
    pins = [r.split("==", 1)[1] for r in reqs if re.match(rf"{re.escape(name)}(\[[^\]]*\])?==", r)]
    assert len(pins) == 1, (name, reqs)
    return pins[0]


def test_accelerator_extras_pin_the_pinned_jax():
    project = _pyproject()["project"]
    jax_version = _pin(project["dependencies"], "jax")
    assert _pin(project["dependencies"], "jaxlib") == jax_version
    extras = project["optional-dependencies"]
    assert extras["tpu"] == [f"jax[tpu]=={jax_version}"]
    assert len(extras["cuda"]) == 1
    m = re.fullmatch(r"jax\[(cuda1[23])\]==(.+)", extras["cuda"][0])
    assert m and m.group(2) == jax_version, extras["cuda"]
    # the installed (pinned) jax declares both extras: pip resolves them against jax's own pins
    # (libtpu 0.0.42.* for tpu; the jax-cuda plugin of the same version for cuda)
    assert importlib.metadata.version("jax") == jax_version
    declared = "\n".join(importlib.metadata.requires("jax") or [])
    assert re.search(r'libtpu==0\.0\.42\.\*; extra == "tpu"', declared), declared
    assert re.search(rf'jax-{m.group(1)}-plugin\[with-cuda\][^;]*{re.escape(jax_version)}[^;]*; '
                     rf'extra == "{m.group(1)}"', declared), declared


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_installs_tpu_for_test_and_runs_on_cpu(tmp_path):
    """`make test` installs [test,tpu], both targets export JAX_PLATFORMS=cpu unless overridden, and the
    stamps are redone when pyproject.toml changes. PYTHON/PY are fakes that print what they would do."""
    fake_py = tmp_path / "py"
    fake_py.write_text('#!/bin/sh\necho "PY $* JAX_PLATFORMS=${JAX_PLATFORMS-unset}"\n')
    fake_sys = tmp_path / "python3"
    fake_sys.write_text('#!/bin/sh\nmkdir -p "$3"\n')
    for f in (fake_py, fake_sys):
        f.chmod(0o755)
    (tmp_path / "probe.mk").write_text("chromium:\n\t@echo chromium\n")
    venv = tmp_path / "venv"
    env = {k: v for k, v in _env().items() if k not in ("JAX_PLATFORMS", "MAKEFLAGS", "MAKELEVEL")}

    def make(*args):
        r = subprocess.run(["make", "-s", "-C", str(ROOT), "-f", "Makefile", "-f", str(tmp_path / "probe.mk"),
                            f"VENV={venv}", f"PYTHON={fake_sys}", f"PY={fake_py}", *args],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        return [l for l in r.stdout.splitlines() if l.startswith("PY ")]

    assert make("test") == [
        "PY -m pip install --quiet --upgrade pip JAX_PLATFORMS=cpu",
        "PY -m pip install --quiet -e .[test] JAX_PLATFORMS=cpu",
        "PY -m pip install --quiet -e .[test,tpu] JAX_PLATFORMS=cpu",
        "PY -m pytest -q -n 2 --dist loadfile JAX_PLATFORMS=cpu",
    ]
    assert make("test") == ["PY -m pytest -q -n 2 --dist loadfile JAX_PLATFORMS=cpu"]  # stamps up to date
    assert make("run") == ["PY -m gsjax.train --config=configs/grpo.py JAX_PLATFORMS=cpu"]
    assert make("run", "JAX_PLATFORMS=") == ["PY -m gsjax.train --config=configs/grpo.py JAX_PLATFORMS="]
    old = time.time() - 86400
    for stamp in (".installed", ".installed-tpu"):
        os.utime(venv / stamp, (old, old))  # pyproject.toml is now newer than both stamps
    assert make("test")[-2:] == ["PY -m pip install --quiet -e .[test,tpu] JAX_PLATFORMS=cpu",
                                 "PY -m pytest -q -n 2 --dist loadfile JAX_PLATFORMS=cpu"]
    assert len(make("run")) == 1 and make("install") == []
