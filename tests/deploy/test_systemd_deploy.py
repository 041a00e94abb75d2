"""The systemd path of docs/DEPLOY.md, run as written: the unit verifies, and its ExecStart runs as the non-root
system user `heatrec` in the unit's working directory, with the environment file, the configuration directory and
the database prepared by the document's own commands.

There is no systemd PID 1 here, so the test does what systemd would: it reads User, Group, WorkingDirectory,
EnvironmentFile, ExecStart, KillSignal and TimeoutStopSec from the unit and starts ExecStart with that identity,
directory and environment, and confined as the unit's sandbox asks (tests/deploy/sandbox.py: read-only root, a
private /proc, no capabilities, no new privileges, and the unit's system call filter, address families and
MemoryDenyWriteExecute as seccomp filters). The unit's three directories are replaced by temporary stand-ins (the
only substitution in the unit), because the test may not write /opt, /etc or /var/lib on the machine it runs on.
`systemd-analyze security` rates the unit itself.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.localservers import MosquittoServer, PostgresCluster, free_port
from service.localservers.postgres import PG_BIN

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "DEPLOY.md"
UNIT = ROOT / "deploy" / "systemd" / "heatrec.service"
EXAMPLE = ROOT / "deploy" / "plant.example.toml"
# The unit's paths, each replaced by a directory of the same role under the test's base directory.
UNIT_DIRS = ("/opt/heatrec", "/etc/heatrec", "/var/lib/heatrec")
# What systemd puts in a service's environment besides EnvironmentFile= (for User=, without a login shell).
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
SANDBOX = Path(__file__).with_name("sandbox.py")
MAX_EXPOSURE = 3.0  # systemd-analyze security: "OK" starts below 4.0; heatrec's unit stays at 3.0 or below

pytestmark = pytest.mark.integration


def systemd_section() -> str:
    """The "systemd" section of docs/DEPLOY.md."""
    text = DOC.read_text()
    return text[text.index("\n## systemd\n"):].split("\n## ", 2)[1]


def shell_block(needle: str) -> str:
    """The one ```sh block of the systemd section that contains `needle`."""
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", systemd_section(), re.S) if needle in b]
    assert len(blocks) == 1, f"docs/DEPLOY.md systemd section: expected one sh block with {needle!r}, got {blocks}"
    return blocks[0]


def unit_values(unit: Path, key: str) -> list[str]:
    """Every value a [Service] key is given, in order (keys such as SystemCallFilter= accumulate)."""
    values, section = [], ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and line.startswith(f"{key}="):
            values.append(line.partition("=")[2].strip())
    return values


def unit_settings(unit: Path) -> dict[str, str]:
    """[Service] key=value pairs of a unit file (a key given twice keeps its last value, as systemd does)."""
    settings: dict[str, str] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def read_environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (no quoting used in ours)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `pred` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.2)


def as_user(user: str, group: str) -> list[str]:
    """Run the rest of the argv as `user` and `group`: setpriv execs in place, so signals reach the service
    itself (runuser would stay in between as parent and SIGKILL it 2 s after forwarding a SIGTERM)."""
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--"]


@pytest.fixture(scope="module")
def heatrec_user() -> pwd.struct_passwd:
    """The system user `heatrec`, created with DEPLOY.md's own `useradd` line unless it exists."""
    [line] = [ln for ln in shell_block("useradd").splitlines() if "useradd" in ln]
    argv = shlex.split(line)
    assert argv[0] == "sudo"
    try:
        pwd.getpwnam("heatrec")
    except KeyError:
        subprocess.run(argv[1:], check=True, timeout=60)
    user = pwd.getpwnam("heatrec")
    # Whether made now or by an earlier run, it is the user the document makes.
    assert user.pw_uid < 1000 and user.pw_uid != 0, "heatrec must be a non-root system user"
    assert user.pw_dir == argv[argv.index("--home-dir") + 1] and user.pw_shell == argv[argv.index("--shell") + 1]
    assert grp.getgrgid(user.pw_gid).gr_name == "heatrec", "useradd gives heatrec its own group (Group=heatrec)"
    return user


@pytest.fixture
def base(shared_tmp_path: Path) -> Path:
    """The test's root: every stand-in lives below it, traversable by heatrec (pytest's own dirs are 0700)."""
    return shared_tmp_path


def stand_ins(base: Path) -> dict[str, Path]:
    """The unit's directories and their stand-ins under `base`."""
    return {d: base / d.lstrip("/") for d in UNIT_DIRS}


def substitute(text: str, dirs: dict[str, Path]) -> str:
    """`text` with the unit's directories replaced by their stand-ins."""
    for real, stand_in in dirs.items():
        text = text.replace(real, str(stand_in))
    return text


def make_opt_heatrec(opt: Path) -> None:
    """A stand-in for /opt/heatrec/.venv: Debian's python3 with this checkout's installed packages.

    The checkout's .venv runs a Python that may sit where other users cannot reach it (here, under /root, mode
    0700); on a plant host `make setup` makes .venv from Debian's python3, which is what this stands in for.
    """
    debian_python = Path("/usr/bin/python3")
    version = subprocess.run([str(debian_python), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert version == str(sys.version_info[:2]), (
        f"Debian's python3 is {version}, the .venv's is {sys.version_info[:2]}: the stand-in venv needs the same "
        "minor version to load the .venv's compiled packages")
    venv = opt / ".venv"
    subprocess.run([str(debian_python), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site_packages = next(Path(sys.prefix).glob("lib/python3.*/site-packages"))
    [own] = venv.glob("lib/python3.*/site-packages")
    # addsitedir also runs the .pth files there, among them the editable install's finder for this checkout.
    (own / "heatrec-checkout.pth").write_text(f"import site; site.addsitedir({str(site_packages)!r})\n")
    script = venv / "bin" / "heatrec"
    script.write_text(f"#!{venv}/bin/python\nimport sys\nfrom service.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)


def verified_unit(base: Path) -> Path:
    """A copy of the unit with only its directories moved to the stand-ins, verified by systemd-analyze."""
    dirs = stand_ins(base)
    make_opt_heatrec(dirs["/opt/heatrec"])
    copy = base / "systemd" / "heatrec.service"
    copy.parent.mkdir()
    copy.write_text(substitute(UNIT.read_text(), dirs))
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=120,
                       check=False)
    output = r.stdout + r.stderr
    # verify exits 0 on unknown keys and unparsable values too: it only warns, naming the unit file.
    assert r.returncode == 0, output
    assert "heatrec.service" not in output and str(copy.parent) not in output, output
    return copy


def systemd_groups(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd system call group (`@system-service` …), its nested groups expanded."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    r = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name], capture_output=True, text=True,
                       timeout=60, check=True)
    calls: set[str] = set()
    for line in r.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= systemd_groups(item, seen) if item.startswith("@") else {item}
    return calls


def filter_entries(value: str) -> set[str]:
    """The system calls a SystemCallFilter= value names (groups expanded)."""
    out: set[str] = set()
    for word in value.lstrip("~").split():
        out |= systemd_groups(word) if word.startswith("@") else {word}
    return out


def sandbox_spec(unit: Path, work: Path, user: pwd.struct_passwd) -> dict[str, object]:
    """What tests/deploy/sandbox.py applies, read from the unit: each setting it stands in for must be there."""
    s = unit_settings(unit)
    expected = {"NoNewPrivileges": "true", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
                "ProtectSystem": "strict", "ProtectProc": "invisible", "ProcSubset": "pid",
                "MemoryDenyWriteExecute": "true", "RestrictNamespaces": "true", "SystemCallArchitectures": "native"}
    assert {k: s.get(k) for k in expected} == expected
    filters = unit_values(unit, "SystemCallFilter")
    assert filters and not filters[0].startswith("~"), "SystemCallFilter= must start with an allow-list"
    allowed = systemd_groups("@default") | filter_entries(filters[0])  # systemd always adds @default
    denied: set[str] = set()
    for value in filters[1:]:
        if value.startswith("~"):
            allowed, denied = allowed - filter_entries(value), denied | (allowed & filter_entries(value))
        else:
            allowed, denied = allowed | filter_entries(value), denied - filter_entries(value)
    assert s["SystemCallErrorNumber"] == "EPERM"
    families = {"AF_INET": 2, "AF_INET6": 10, "AF_UNIX": 1}
    words = s["RestrictAddressFamilies"].split()
    assert set(words) <= set(families), words
    return {"uid": user.pw_uid, "gid": user.pw_gid, "user": user.pw_name, "workdir": str(work),
            "writable": [str(work)], "read_only_root": True, "proc_hidepid": s["ProtectProc"],
            "proc_subset": s["ProcSubset"], "nofile": int(s["LimitNOFILE"]), "umask": int(s["UMask"], 8),
            "mdwe": True, "namespaces": True, "families": sorted(families[w] for w in words),
            "syscalls": sorted(allowed), "denied_syscalls": sorted(denied)}


def sandboxed(spec_file: Path) -> list[str]:
    """The argv prefix that runs a program as the unit's sandbox would (as root; it drops to User= itself)."""
    return ["unshare", "--mount", "--propagation", "private", "--", "/usr/bin/python3", str(SANDBOX),
            str(spec_file), "--"]


def exposure(unit: Path) -> tuple[float, str]:
    """systemd-analyze's overall exposure of a unit file (0 best, 10 worst) and its whole report."""
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=120, check=False)
    report = r.stdout + r.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
    assert m is not None, report
    return float(m.group(1)), report


def test_unit_sandbox_rates_at_most_3(base: Path) -> None:
    """`systemd-analyze security --offline=yes` on the shipped unit (and on the copy the deploy test runs)."""
    value, report = exposure(UNIT)
    assert value <= MAX_EXPOSURE, f"exposure {value} > {MAX_EXPOSURE}:\n{report}"
    for setting in ("PrivateDevices=", "ProtectKernelTunables=", "SystemCallFilter=~@privileged",
                    "RestrictAddressFamilies=~AF_PACKET", "CapabilityBoundingSet=~CAP_SYS_ADMIN", "UMask="):
        assert any(line.startswith(f"✓ {setting}") for line in report.splitlines()), f"{setting} not met:\n{report}"
    copy = verified_unit(base)
    assert exposure(copy)[0] == value  # moving the directories changes nothing of the sandbox


def test_unit_verifies_with_only_its_directories_moved(base: Path) -> None:
    copy = verified_unit(base)
    unit = unit_settings(copy)
    assert unit["User"] == unit["Group"] == "heatrec"
    assert unit["WorkingDirectory"] == str(stand_ins(base)["/var/lib/heatrec"])
    assert unit_settings(UNIT)["StateDirectory"] == "heatrec"  # systemd makes /var/lib/heatrec, owned by User=


def prepare_database(postgres: PostgresCluster, passwords: dict[str, str]) -> tuple[str, str]:
    """Run DEPLOY.md's SQL on the session cluster as its superuser (`sudo -u postgres psql`); return the
    (heatrec, grafana) role names it used.

    Roles are cluster-wide and the session cluster has a role heatrec of its own, so the document's role and
    database names get a unique suffix; the SQL is otherwise the document's, with its psql variables.
    """
    block = shell_block("<<'SQL'")
    command, _, rest = block.partition("\n")
    sql = rest[:rest.rindex("SQL\n")]
    assert command.startswith("sudo -u postgres psql ") and "-v ON_ERROR_STOP=1" in command, command
    variables = dict(re.findall(r'-v (\w+)="\$(\w+)"', command))  # psql variable -> shell variable
    assert set(variables) >= {"db_password", "grafana_password"}, command
    suffix = secrets.token_hex(4)
    role, grafana = f"heatrec_{suffix}", f"grafana_{suffix}"
    sql = re.sub(r"\bgrafana\b", grafana, re.sub(r"\bheatrec\b", role, sql))
    argv = [str(PG_BIN / "psql"), "-X", "-h", postgres.host, "-p", str(postgres.port), "-U", postgres.admin_user,
            "-d", "postgres", "-v", "ON_ERROR_STOP=1"]
    for var, shell_var in variables.items():
        argv += ["-v", f"{var}={passwords[shell_var]}"]
    r = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60, check=False,
                       env={**os.environ, "PGPASSWORD": postgres.admin_password})
    assert r.returncode == 0, f"DEPLOY.md's SQL failed: {r.stderr}"
    # Step 2's preload line is what the cluster runs with (heatrec's first migration needs it).
    assert "shared_preload_libraries = 'timescaledb'" in shell_block("shared_preload_libraries")
    assert postgres.psql("SHOW shared_preload_libraries") == "timescaledb"
    return role, grafana


def psql_as(postgres: PostgresCluster, user: str, password: str, db: str, sql: str) -> subprocess.CompletedProcess[str]:
    """One SQL command as `user` (a role other than the cluster's superuser)."""
    return subprocess.run([str(PG_BIN / "psql"), "-X", "-At", "-h", postgres.host, "-p", str(postgres.port),
                           "-U", user, "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "PGPASSWORD": password})


def generated_passwords() -> dict[str, str]:
    """The passwords of DEPLOY.md's step 3, made by its own commands."""
    out = {}
    for name, command in re.findall(r'^(\w+)="\$\((.+)\)"$', shell_block("openssl rand"), re.M):
        out[name] = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                                   check=True).stdout.strip()
        assert len(out[name]) >= 32, f"{command} made a short password"
    return out


def run_doc_lines(block: str, keep: Callable[[str], bool], dirs: dict[str, Path], shell_vars: dict[str, str],
                  cwd: Path) -> None:
    """The lines of a doc block that `keep` selects (with their heredocs), run as the admin's shell would.

    The shell variables of step 3 are set, not exported (as in the admin's shell); `sudo` is dropped (the test
    is root already) and `sudo -u heatrec` becomes setpriv (sudo too would pass none of those variables).
    """
    lines = substitute(block, dirs).splitlines(keepends=True)
    chosen, i = [], 0
    while i < len(lines):
        heredoc = re.search(r"<<'?(\w+)'?\s*$", lines[i])
        end = i + 1
        if heredoc:
            while lines[end].strip() != heredoc.group(1):
                end += 1
            end += 1
        if keep(lines[i]):
            chosen += lines[i:end]
        i = end
    text = "".join(chosen)
    assert text.strip(), f"nothing selected from:\n{block}"
    text = re.sub(r"^sudo -u heatrec ", shlex.join(as_user("heatrec", "heatrec")) + " ", text, flags=re.M)
    text = re.sub(r"^sudo ", "", text, flags=re.M)
    script = "".join(f"{k}={shlex.quote(v)}\n" for k, v in shell_vars.items()) + text
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env={"PATH": os.environ["PATH"]},
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, f"{text}\n{r.stdout}{r.stderr}"


def edit_config(path: Path, edits: list[tuple[str, str]]) -> None:
    """Replace each pattern (a whole line) exactly once, in place: owner and mode stay, as with sudoedit."""
    text = path.read_text()
    for pattern, new in edits:
        text, n = re.subn(rf"(?m)^{pattern}$", new, text)
        assert n == 1, f"{path.name}: {pattern!r} matched {n} times"
    with path.open("r+") as f:
        f.truncate()
        f.write(text)


@contextlib.contextmanager
def simulators(base: Path, mosquitto: MosquittoServer) -> Iterator[dict[str, int]]:
    """The demo's simulated CDU, heat pump and heat meter standing in for the plant's devices (own process)."""
    ports = {"cdu1": free_port(), "hp1": free_port()}
    config = base / "simulators.toml"
    config.write_text(f"""
[simulation]
mqtt_broker = "mqtt://127.0.0.1:{mosquitto.port}"
mqtt_username = "{mosquitto.username}"
mqtt_password = "{mosquitto.password}"

[[simulation.cdus]]
id = "cdu1"
endpoint = "opc.tcp://127.0.0.1:{ports['cdu1']}"

[[simulation.heat_pumps]]
id = "hp1"
endpoint = "127.0.0.1:{ports['hp1']}"
capacity_kw = 1200.0

[[simulation.heat_meters]]
id = "meter1"
serial = "71234567"
topic = "mbus/heatmeter/71234567"
""")
    log = base / "simulators.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "simulate", "-c", str(config)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "simulators running" in log.read_text() or proc.poll() is not None, 60, "simulators")
        assert proc.poll() is None, log.read_text()
        yield ports
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def service_environment(user: pwd.struct_passwd, environment_file: Path | None) -> dict[str, str]:
    """The environment systemd gives a service with User=: its fixed variables plus EnvironmentFile=."""
    env = {"PATH": SYSTEMD_PATH, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
           "SHELL": user.pw_shell}
    if environment_file is not None:
        env |= read_environment_file(environment_file)
    return env


@pytest.mark.timeout(300)
def test_documented_systemd_deploy_runs_as_heatrec(base: Path, heatrec_user: pwd.struct_passwd,
                                                   postgres: PostgresCluster, mosquitto: MosquittoServer) -> None:
    dirs = stand_ins(base)
    unit = unit_settings(verified_unit(base))
    work = Path(unit["WorkingDirectory"])
    # StateDirectory=heatrec: systemd creates the working directory, owned by User= and Group=, StateDirectoryMode.
    work.mkdir(parents=True)
    os.chown(work, heatrec_user.pw_uid, heatrec_user.pw_gid)
    work.chmod(int(unit_settings(UNIT)["StateDirectoryMode"], 8))
    etc = dirs["/etc/heatrec"]
    etc.parent.mkdir(parents=True)

    passwords = generated_passwords()
    # The broker is the session's Mosquitto, whose user heatrec has its own password (step 3's mosquitto_passwd).
    assert mosquitto.username == "heatrec"
    passwords["HEATREC_MQTT_PASSWORD"] = mosquitto.password
    role, grafana = prepare_database(postgres, passwords)
    db_name = role  # the document names the database after its owner

    heatrec_bin = dirs["/opt/heatrec"] / ".venv" / "bin" / "heatrec"
    r = subprocess.run([*as_user("heatrec", "heatrec"), str(heatrec_bin), "--version"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, f"heatrec cannot run this checkout (it and its .venv must be readable by others): {r}"

    api_port, scada_port = free_port(), free_port()
    with simulators(base, mosquitto) as sims:
        # Step 5 from the checkout: useradd was the fixture's, then the installs, then what sudoedit would change.
        run_doc_lines(shell_block("useradd"), lambda ln: ln.startswith("sudo install "), dirs, passwords, ROOT)
        config, env_file = etc / "plant.toml", etc / "heatrec.env"
        edit_config(config, [
            # The edits step 5 lists for the systemd path ...
            (r'# env_file = "heatrec\.env"', 'env_file = "heatrec.env"'),
            (r'host = "timescaledb" .*', 'host = "127.0.0.1"'),
            (r'host = "0\.0\.0\.0" .*', 'host = "127.0.0.1"'),
            (r'endpoint = "mqtt://mosquitto:1883" .*', f'endpoint = "mqtt://127.0.0.1:{mosquitto.port}"'),
            # ... and what only the test changes: free ports, its own database, the simulators as the plant.
            (r"port = 5432", f"port = {postgres.port}"),
            (r'name = "heatrec"', f'name = "{db_name}"'),
            (r'user = "heatrec" .*', f'user = "{role}"'),
            # The test reads the detailed health without a token (only from loopback).
            (r"port = 8000", f'port = {api_port}\nmonitoring_networks = ["127.0.0.1/32"]'),
            (r'endpoint = "opc\.tcp://0\.0\.0\.0:4840" .*', f'endpoint = "opc.tcp://0.0.0.0:{scada_port}"'),
            (r'endpoint = "opc\.tcp://cdu1\.plant\.example:4840" .*',
             f'endpoint = "opc.tcp://127.0.0.1:{sims["cdu1"]}"'),
            (r'endpoint = "hp1\.plant\.example:502" .*', f'endpoint = "127.0.0.1:{sims["hp1"]}"'),
        ])
        # Step 6: the environment file, and check-config as heatrec (it reads the passwords through env_file).
        run_doc_lines(shell_block("heatrec.env"), lambda ln: True, dirs, passwords, ROOT)
        for path, mode in ((etc, 0o750), (config, 0o640), (env_file, 0o640)):
            st = path.stat()
            assert (st.st_uid, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o777) == (0, "heatrec", mode), path
        environment_file = Path(unit["EnvironmentFile"].removeprefix("-"))
        assert environment_file == env_file
        log = base / "journal.log"
        kill_signal = signal.Signals[unit["KillSignal"]]
        spec_file = base / "sandbox.json"
        spec_file.write_text(json.dumps(sandbox_spec(UNIT, work, heatrec_user)))
        with log.open("wb") as out:
            service = subprocess.Popen(sandboxed(spec_file) + shlex.split(unit["ExecStart"]), cwd=work,
                                       env=service_environment(heatrec_user, environment_file), stdout=out,
                                       stderr=subprocess.STDOUT)
        try:
            api = f"http://127.0.0.1:{api_port}"

            def healthy() -> bool:
                # The API answers (its status alone without a token; the database is checked through the
                # readings below, and the parts of the health need a token, which step 8 creates).
                assert service.poll() is None, log.read_text()[-3000:]
                try:
                    return httpx.get(f"{api}/api/v1/health", timeout=5).json()["status"] in ("ok", "degraded")
                except httpx.TransportError:
                    return False

            wait_for(healthy, 90, "the API's health")
            # It is the service itself (setpriv execs), as heatrec in every uid, in the working directory.
            status = Path(f"/proc/{service.pid}/status").read_text()
            uids = re.search(r"(?m)^Uid:\s+(.*)$", status)
            assert uids is not None and set(uids.group(1).split()) == {str(heatrec_user.pw_uid)}, status
            # ... and confined: seccomp filters on, no new privileges, no capability left even in the bounding set.
            assert re.search(r"(?m)^Seccomp:\s+2$", status) and re.search(r"(?m)^NoNewPrivs:\s+1$", status), status
            assert re.search(r"(?m)^CapBnd:\s+0+$", status) and re.search(r"(?m)^CapEff:\s+0+$", status), status
            assert Path(f"/proc/{service.pid}/cwd").resolve() == work.resolve()

            # Samples from all three protocols, read as Grafana does: the grafana role through the readings view.
            def devices_in_readings() -> set[str]:
                r = psql_as(postgres, grafana, passwords["HEATREC_GRAFANA_DB_PASSWORD"], db_name,
                            "SELECT DISTINCT split_part(point, '.', 1) FROM readings WHERE quality = 'GOOD'")
                assert r.returncode == 0, r.stderr
                return set(r.stdout.split())

            wait_for(lambda: devices_in_readings() == {"cdu1", "hp1", "meter1"}, 90,
                     "GOOD samples from cdu1 (OPC UA), hp1 (Modbus) and meter1 (MQTT)")
            _check_grafana_reads_every_relation(postgres, db_name, role, grafana, passwords)
            _check_state_under_working_directory(work, etc, postgres, db_name)
            token = _run_documented_commands(work, heatrec_user, dirs)
            points = httpx.get(f"{api}/api/v1/points", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert points.status_code == 200, points.text
            assert {p["device"] for p in points.json()["points"]} == {"cdu1", "hp1", "meter1"}
        finally:
            service.send_signal(kill_signal)
            try:
                rc = service.wait(float(unit["TimeoutStopSec"]))
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait(10)
                raise
        assert rc == 0, log.read_text()[-3000:]


def _check_grafana_reads_every_relation(postgres: PostgresCluster, db: str, role: str, grafana: str,
                                        passwords: dict[str, str]) -> None:
    """Every table and view heatrec's migrations made after the grants is readable by grafana, and only that."""
    relations = postgres.psql(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'p') AND pg_get_userbyid(c.relowner) = '{role}' "
        "ORDER BY 1", db=db).split()
    assert {"samples", "readings", "settlements", "register_hours", "alarms"} <= set(relations), relations
    password = passwords["HEATREC_GRAFANA_DB_PASSWORD"]
    assert "api_tokens" in relations
    for rel in relations:
        r = psql_as(postgres, grafana, password, db, f'SELECT count(*) FROM "{rel}"')
        if rel == "api_tokens":  # the token hashes are heatrec's alone (migration 0010)
            assert r.returncode != 0 and "permission denied" in r.stderr, r.stderr
        else:
            assert r.returncode == 0, f"grafana cannot read {rel}: {r.stderr}"
    r = psql_as(postgres, grafana, password, db, "INSERT INTO events (time, source, kind, message) "
                "VALUES (now(), 'grafana', 'test', 'must be refused')")
    assert r.returncode != 0 and ("permission denied" in r.stderr or "read-only transaction" in r.stderr), r.stderr
    # heatrec's own role is no superuser: the document's SQL did what the migrations could not.
    assert postgres.psql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{role}'") == "f"


def _check_state_under_working_directory(work: Path, etc: Path, postgres: PostgresCluster, db: str) -> None:
    """The spool and the SCADA certificate are in the working directory; /etc/heatrec holds only what root put."""
    spool = work / "var" / "spool" / f"{postgres.host}-{postgres.port}-{db}"
    assert spool.is_dir(), sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    assert (work / "var" / "pki" / "scada" / "server-cert.der").is_file()
    assert spool.stat().st_uid == pwd.getpwnam("heatrec").pw_uid
    assert sorted(p.name for p in etc.iterdir()) == ["heatrec.env", "plant.toml"]


def _run_documented_commands(work: Path, user: pwd.struct_passwd, dirs: dict[str, Path]) -> str:
    """Step 8 as written, as heatrec from its working directory, with sudo's clean environment; the token."""
    block = substitute(shell_block("token create"), dirs)
    assert block.startswith(f"cd {work}\n"), block
    script = block.replace("sudo -u heatrec ", shlex.join(as_user("heatrec", "heatrec")) + " ")
    assert "sudo" not in script
    # No password in the environment: the commands find them through the configuration's env_file.
    env = {"PATH": SYSTEMD_PATH, "HOME": user.pw_dir, "USER": "root", "LOGNAME": "root"}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, f"{script}\n{r.stdout}{r.stderr}"
    assert "role viewer, name 'grafana-ops'" in r.stderr, r.stderr
    token, *settlement = r.stdout.splitlines()
    assert re.fullmatch(r"hr_\S+", token), r.stdout
    # The contract of the example is settled with the shipped rule set: its row says open (the month runs).
    [row] = [ln for ln in settlement if ln.startswith("supply ")]
    assert "open" in row, r.stdout
    return token
