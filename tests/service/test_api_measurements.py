"""REST API: measurement uploads (idempotent, all-or-nothing) and paged reads as JSON and CSV."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from predictor.kernels.keys import KernelKey
from tests.service.conftest import AUTH


def conv_key(channels: int, bits: int = 32) -> dict[str, Any]:
    return KernelKey(op_type="Conv", inputs=((1, 16, 28, 28),), outputs=((1, channels, 28, 28),),
                     weight=(channels, 16, 3, 3), activation="Relu", attrs=(("kernel_shape", (3, 3)),),
                     bits=bits).to_dict()


def gemm_key(n: int) -> dict[str, Any]:
    return KernelKey(op_type="Gemm", inputs=((1, 256),), outputs=((1, n),), weight=(n, 256)).to_dict()


def row(key: dict[str, Any], median_ms: float = 0.5) -> dict[str, Any]:
    return {"key": key, "median_ms": median_ms, "p10_ms": median_ms * 0.9, "p90_ms": median_ms * 1.1,
            "repeats": 20}


def post(api: TestClient, device: str, rows: list[dict[str, Any]], run_id: str = "run-1") -> Any:
    return api.post(f"/api/devices/{device}/measurements", json={"run_id": run_id, "measurements": rows},
                    headers=AUTH)


def counts(response: Any) -> tuple[int, int, int]:
    """(inserted, duplicates, conflicts) of a batch's answer."""
    answer = response.json()
    return answer["inserted"], answer["duplicates"], answer["conflicts"]


def stored_count(api: TestClient, device: str) -> int:
    return int(api.get(f"/api/devices/{device}/measurements").json()["count"])


def test_same_batch_twice_is_inserted_then_duplicates(api: TestClient, device: str) -> None:
    rows = [row(conv_key(32)), row(conv_key(64)), row(gemm_key(128))]
    first = post(api, device, rows)
    assert first.status_code == 200, first.text
    assert first.json() == {"inserted": 3, "duplicates": 0, "conflicts": 0, "first_conflict": None,
                            "conflicting": [], "message": None}
    assert counts(post(api, device, rows)) == (0, 3, 0)
    assert stored_count(api, device) == 3
    assert counts(post(api, device, rows, run_id="run-2")) == (3, 0, 0)
    detail = api.get(f"/api/devices/{device}").json()
    assert detail["measurements"] == {"Conv": 4, "Gemm": 2}
    assert detail["measurement_count"] == 6


def test_repeated_key_within_a_batch_counts_as_duplicate(api: TestClient, device: str) -> None:
    assert counts(post(api, device, [row(conv_key(32)), row(conv_key(32))])) == (1, 1, 0)


def test_conflicting_duplicates_are_reported_and_the_first_median_kept(api: TestClient, device: str) -> None:
    """Same run and key with another median: not stored, counted, listed and named in a message (never silent)."""
    key_hash = KernelKey.from_dict(conv_key(32)).key_hash
    in_batch = post(api, device, [row(conv_key(32), 0.5), row(conv_key(64)), row(conv_key(32), 0.7)]).json()
    conflict = {"key_hash": key_hash, "op_type": "Conv", "stored_median_ms": 0.5, "sent_median_ms": 0.7}
    assert in_batch == {"inserted": 2, "duplicates": 1, "conflicts": 1, "first_conflict": conflict,
                        "conflicting": [conflict], "message": (
                            "1 measurement(s) of run 'run-1' repeat a stored (run, key) with another median and "
                            f"were not stored (the stored median is kept): Conv key {key_hash}: stored 0.5 ms, "
                            "sent 0.7 ms")}
    later = post(api, device, [row(conv_key(64)), row(conv_key(32), 0.9), row(conv_key(32), 0.5)]).json()
    assert (later["inserted"], later["duplicates"], later["conflicts"]) == (0, 3, 1)
    assert later["first_conflict"]["sent_median_ms"] == 0.9
    stored = api.get(f"/api/devices/{device}/measurements", params={"op_type": "Conv"}).json()["data"]
    assert sorted(m["median_ms"] for m in stored) == [0.5, 0.5]
    # Another run may measure the same key differently: that is a new row, not a conflict.
    assert counts(post(api, device, [row(conv_key(32), 0.7)], run_id="run-2")) == (1, 0, 0)


def test_server_derives_hash_op_type_and_bits_from_the_key(api: TestClient, device: str) -> None:
    key = conv_key(32, bits=8)
    lying = {**row(key), "key_hash": "0" * 32, "op_type": "Gemm", "bits": 4}
    assert post(api, device, [lying]).json()["inserted"] == 1
    stored = api.get(f"/api/devices/{device}/measurements").json()["data"][0]
    assert stored["key_hash"] == KernelKey.from_dict(key).key_hash
    assert (stored["op_type"], stored["bits"]) == ("Conv", 8)
    assert stored["key"] == KernelKey.from_dict(key).to_dict()


@pytest.mark.parametrize(
    ("bad_row", "fragment"),
    [
        ({**row(conv_key(8)), "median_ms": -1.0, "p10_ms": -2.0}, "measurements[1].median_ms"),
        ({**row(conv_key(8)), "median_ms": 2e6, "p90_ms": 3e6}, "measurements[1].median_ms"),
        ({**row(conv_key(8)), "p10_ms": 0.9}, "measurements[1]: Value error, p10_ms=0.9 exceeds median_ms"),
        ({**row(conv_key(8)), "repeats": 0}, "measurements[1].repeats"),
        ({**row(conv_key(8)), "key": {"inputs": [[1, 2]]}}, "measurements[1].key.op_type"),
        ({**row(conv_key(8)), "key": {**conv_key(8), "inputs": [["a", 2]]}}, "measurements[1].key.inputs[0][0]"),
        ({**row(conv_key(8)), "key": {**conv_key(8), "color": "red"}},
         "measurements[1].key.color: Extra inputs are not permitted"),
        ({**row(conv_key(8)), "key": {**conv_key(8), "bits": 0}}, "measurements[1].key.bits"),
        ({**row(conv_key(8)), "key": "Conv"}, "measurements[1].key"),
    ],
)
def test_bad_row_rejects_the_whole_batch(api: TestClient, device: str, bad_row: dict[str, Any],
                                         fragment: str) -> None:
    response = post(api, device, [row(conv_key(32)), bad_row, row(conv_key(64))])
    assert response.status_code == 422
    assert fragment in response.json()["detail"]
    assert stored_count(api, device) == 0


def test_nan_latency_is_rejected(api: TestClient, device: str) -> None:
    body = json.dumps({"run_id": "run-1", "measurements": [row(conv_key(32)), {**row(conv_key(64)),
                                                                                 "median_ms": float("nan")}]})
    assert "NaN" in body
    response = api.post(f"/api/devices/{device}/measurements", content=body,
                        headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422
    assert "measurements[1].median_ms: Input should be a finite number" in response.json()["detail"]
    assert stored_count(api, device) == 0


def test_measurements_of_unknown_device_is_404(api: TestClient) -> None:
    assert post(api, "nope", [row(conv_key(32))]).status_code == 404
    assert api.get("/api/devices/nope/measurements").status_code == 404


def test_measurements_need_a_token(api: TestClient, device: str) -> None:
    response = api.post(f"/api/devices/{device}/measurements", json={"run_id": "r", "measurements": []})
    assert response.status_code == 401


def test_pages_filters_and_csv(api: TestClient, device: str) -> None:
    rows = [row(conv_key(c), 0.1 * (i + 1)) for i, c in enumerate((8, 16, 24))]
    rows += [row(conv_key(8, bits=8), 0.05), row(gemm_key(64), 0.2), row(gemm_key(128), 0.3)]
    assert post(api, device, rows).json()["inserted"] == 6
    url = f"/api/devices/{device}/measurements"

    page = api.get(url, params={"limit": 4}).json()
    assert (page["count"], page["limit"], page["offset"], len(page["data"])) == (6, 4, 0, 4)
    rest = api.get(url, params={"limit": 4, "offset": 4}).json()
    assert len(rest["data"]) == 2
    hashes = [m["key_hash"] for m in page["data"] + rest["data"]]
    assert sorted(hashes) == sorted(KernelKey.from_dict(r["key"]).key_hash for r in rows)

    gemms = api.get(url, params={"op_type": "Gemm"}).json()
    assert gemms["count"] == 2
    assert sorted(m["median_ms"] for m in gemms["data"]) == [0.2, 0.3]
    int8 = api.get(url, params={"op_type": "Conv", "bits": 8}).json()
    assert [m["median_ms"] for m in int8["data"]] == [0.05]

    assert api.get(url, params={"limit": 1001}).status_code == 422
    assert api.get(url, params={"offset": -1}).status_code == 422

    csv_response = api.get(url, params={"format": "csv", "op_type": "Conv", "bits": 32, "limit": 2})
    assert csv_response.status_code == 200
    assert csv_response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(csv_response.text)))
    json_page = api.get(url, params={"op_type": "Conv", "bits": 32, "limit": 2}).json()["data"]
    assert len(table) == 2
    assert [r["key_hash"] for r in table] == [m["key_hash"] for m in json_page]
    assert [float(r["median_ms"]) for r in table] == [m["median_ms"] for m in json_page]
    assert [json.loads(r["key"]) for r in table] == [m["key"] for m in json_page]
    assert {"run_id", "key_hash", "op_type", "bits", "p10_ms", "p90_ms", "repeats"} <= set(table[0])


def test_keyset_pages_walk_a_table_in_insertion_order(api: TestClient, device: str) -> None:
    """`after` with each page's next_after walks the table as offset does, filtered or not; the count is the total."""
    rows = [row(gemm_key(8 * (i + 1)), 0.01 * (i + 1)) for i in range(11)] + [row(conv_key(8 * (i + 1)))
                                                                               for i in range(4)]
    assert post(api, device, rows).json()["inserted"] == 15
    url = f"/api/devices/{device}/measurements"
    everything = [m["key_hash"] for m in api.get(url, params={"limit": 100}).json()["data"]]
    walked: list[str] = []
    params: dict[str, Any] = {"limit": 4}
    while True:
        page = api.get(url, params=params).json()
        assert page["count"] == 15
        walked += [m["key_hash"] for m in page["data"]]
        if page["next_after"] is None:
            break
        params["after"] = page["next_after"]
    assert walked == everything and len(walked) == 15
    first = api.get(url, params={"op_type": "Gemm", "limit": 5}).json()
    second = api.get(url, params={"op_type": "Gemm", "limit": 5, "after": first["next_after"]}).json()
    last = api.get(url, params={"op_type": "Gemm", "limit": 5, "after": second["next_after"]}).json()
    assert [len(p["data"]) for p in (first, second, last)] == [5, 5, 1] and last["next_after"] is None
    by_offset = api.get(url, params={"op_type": "Gemm", "limit": 100}).json()["data"]
    assert [m["key_hash"] for p in (first, second, last) for m in p["data"]] == [m["key_hash"] for m in by_offset]
    assert sorted(m["median_ms"] for m in by_offset) == pytest.approx([0.01 * (i + 1) for i in range(11)])
    assert first["count"] == 11
    csv_page = api.get(url, params={"format": "csv", "limit": 3})
    assert csv_page.headers["x-next-after"] == str(api.get(url, params={"limit": 3}).json()["next_after"])
    assert api.get(url, params={"after": -1}).status_code == 422
