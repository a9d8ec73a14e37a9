"""Signed payloads: with a secret, workers and clients never unpickle a payload without a valid HMAC."""

from __future__ import annotations

import hmac
import os
import pickle
import subprocess
import sys
import uuid

import conftest
import dask
import funcs
import pytest
from conftest import wait_until

from rush_dask import PayloadSignatureError, Rush, RushWorker
from rush_dask.serialize import dumps, loads, mac, sign

SECRET = "correct horse battery staple"


@pytest.fixture
def signed(redis_url):
    yield from conftest.fresh_network(redis_url, secret=SECRET)


def forged(marker):
    return pickle.dumps(funcs.MarkerPayload(marker), protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize("secret", [b"k", b"x" * 64, b"y" * 65, bytes(range(256)) * 3])
@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 100_000])
def test_mac_is_hmac_sha256(secret, size):
    data = bytes(i % 251 for i in range(size))
    assert mac(secret, data) == hmac.digest(secret, data, "sha256")
    assert mac(secret, memoryview(data)) == hmac.digest(secret, data, "sha256")


def test_signed_payloads_round_trip_and_refuse_tampering():
    key = b"k"
    blob = dumps({"x": 1}, key)
    assert loads(blob, key) == {"x": 1}
    with pytest.raises(PayloadSignatureError, match="signature invalid"):
        loads(blob[:-1] + bytes([blob[-1] ^ 1]), key)
    with pytest.raises(PayloadSignatureError, match="signature invalid"):
        loads(dumps({"x": 1}, b"other"), key)
    with pytest.raises(PayloadSignatureError, match="signature missing"):
        loads(dumps({"x": 1}), key)
    with pytest.raises(PayloadSignatureError, match="set the RUSH_SECRET"):
        loads(blob)


def test_signed_tasks_run_normally(signed):
    signed.start_workers(funcs.with_constants, n_workers=2, scale=10)
    keys = signed.push_tasks([{"x": i} for i in range(20)], extra=[{"tag": i} for i in range(20)])
    signed.wait_for_tasks(keys, timeout=60)
    data = signed.fetch_finished_tasks()
    assert sorted(data.y) == [10 * i for i in range(20)]
    assert sorted(data.tag) == list(range(20))
    # What is in Redis is signed: a reader without the secret is refused, not fooled.
    xs = signed.client.hget(signed.keys.task(keys[0]), "xs")
    with pytest.raises(PayloadSignatureError, match="has no secret"):
        loads(xs)


def test_forged_task_never_runs(signed, tmp_path):
    marker = tmp_path / "pwned"
    signed.start_workers(funcs.add, n_workers=1)
    signed.wait_for_workers(1, timeout=60)
    good = signed.push_tasks([{"x1": 1, "x2": 2}, {"x1": 3, "x2": 4}])
    # An attacker with write access to Redis pushes a task of its own (a plain pickle),
    # with the same script a controller uses.
    forged_key = "forged-" + uuid.uuid4().hex[:8]
    signed.scripts.push(args=[signed.keys.prefix, 1, "", 0, "", "", 0, 3,
                              forged_key, forged(marker), b"", ""])
    signed.wait_for_tasks([*good, forged_key], timeout=60)
    assert not marker.exists()
    failed = signed.fetch_failed_tasks()
    assert list(failed["keys"]) == [forged_key]
    assert "signature missing" in failed.error.iloc[0] or "signature invalid" in failed.error.iloc[0]
    wait_until(lambda: any(forged_key in m and "refused" in m for m in signed.read_log().message),
               30, "refusal in the worker log")
    assert set(signed.fetch_finished_tasks()["keys"]) == set(good)
    stderr = next(iter(signed._processes.values())).stderr_path.read_text()
    assert forged_key in stderr and "not unpickled" in stderr


def test_forged_function_blob_never_runs(signed, tmp_path):
    marker = tmp_path / "pwned"
    signed.start_workers(funcs.add, n_workers=1)
    keys = signed.push_tasks([{"x": 1}], fun=funcs.square)
    signed.wait_for_tasks(keys, timeout=60)
    assert signed.fetch_finished_tasks().y.tolist() == [1]
    # Overwrite the stored function; a fresh worker (no cached copy) runs the next task.
    fun_id = signed.client.hget(signed.keys.task(keys[0]), "fun").decode()
    signed.stop_workers("kill")
    signed.client.set(signed.keys.function(fun_id), forged(marker))
    (forged_key,) = signed.push_tasks([{"x": 2}], fun=funcs.square)  # same function, same id
    assert signed.client.hget(signed.keys.task(forged_key), "fun").decode() == fun_id
    signed.start_workers(funcs.add, n_workers=1)
    signed.wait_for_tasks([forged_key], timeout=60)
    assert not marker.exists()
    error = signed.fetch_failed_tasks().error.tolist()
    assert len(error) == 1 and "PayloadSignatureError: payload signature missing" in error[0]
    wait_until(lambda: any(forged_key in m and "refused" in m for m in signed.read_log().message),
               30, "refusal in the worker log")


def test_worker_with_the_wrong_secret_refuses_tasks(signed, redis_url, tmp_path):
    marker = tmp_path / "ran"
    keys = signed.push_tasks([{"path": str(marker)}], fun=funcs.touch)
    # A worker process started with another secret refuses the configuration and exits.
    start_id = signed.worker_script(funcs.add).split("--start-id ")[1]
    env = dict(os.environ, RUSH_REDIS_URL=redis_url, RUSH_SECRET="wrong")
    proc = subprocess.run([sys.executable, "-m", "rush_dask.worker", "--network", signed.network_id,
                           "--start-id", start_id],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "signature invalid" in proc.stderr and "Traceback" not in proc.stderr
    # A worker without any secret says what to set.
    env.pop("RUSH_SECRET")
    proc = subprocess.run([sys.executable, "-m", "rush_dask.worker", "--network", signed.network_id,
                           "--start-id", start_id],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "RUSH_SECRET" in proc.stderr
    assert signed.n_queued_tasks == 1
    # A worker that takes part directly with the wrong secret fails the task without unpickling it.
    worker = RushWorker(signed.network_id, url=redis_url, secret="wrong")
    try:
        task = worker.pop_task(timeout=5)
        outcome, text, _, _ = worker.execute(task)
        worker.fail_tasks([task.key], [text])
    finally:
        worker.close()
    assert outcome == "error" and "signature invalid" in text
    assert not marker.exists()
    assert signed.fetch_failed_tasks()["keys"].tolist() == keys


def test_signed_client_leaves_unsigned_rows_out_of_tables(rush, redis_url, caplog):
    rush.start_workers(funcs.add, n_workers=1)
    keys = rush.push_tasks([{"x1": 1, "x2": 1}])
    rush.wait_for_tasks(keys, timeout=60)
    assert rush.fetch_finished_tasks().y.tolist() == [2]
    reader = Rush(rush.network_id, url=redis_url, secret=SECRET)
    data = reader.fetch_finished_tasks()
    assert "y" not in data.columns and "x1" not in data.columns and data["keys"].tolist() == keys
    assert any(keys[0] in r.message and "signature missing" in r.message for r in caplog.records)


def test_dask_graph_with_a_secret(signed):
    signed.start_workers(n_workers=2)
    a = dask.delayed(sum)([1, 2, 3])
    b = dask.delayed(lambda v: v * 2)(a)
    assert dask.compute(b, scheduler=signed)[0] == 12
    failing = dask.delayed(lambda v: 1 / v)(0)
    with pytest.raises(ZeroDivisionError):
        dask.compute(failing, scheduler=signed)


def test_graph_result_forged_in_redis_is_refused_by_the_client(signed):
    signed.start_workers(n_workers=1)
    future = signed.submit(sum, [1, 2])
    assert future.result(timeout=60) == 3
    signed.client.hset(signed.keys.task(future.task_key), "ys", sign(pickle.dumps(7), b"wrong"))
    with pytest.raises(PayloadSignatureError, match="signature invalid"):
        future.result(timeout=60)
    future.release()


def test_bad_secret_is_a_clear_error(redis_url):
    with pytest.raises(ValueError, match="secret must be a non-empty"):
        Rush(url=redis_url, secret=b"")
    with pytest.raises(ValueError, match="secret must be a non-empty"):
        Rush(url=redis_url, secret=42)
