"""The energy boundary (board, facility, marginal) and own-device serving, on real simulator runs."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.cluster import Cluster
from scheduler.config import DEFAULT_DATACENTER_PUE, ConfigError, parse_cluster
from scheduler.registry import build_policy
from simulator.metrics import summarize
from simulator.sim import Simulation
from simulator.traces import Trace
from simulator.workload import make_workload

LAPTOP = {"name": "laptops", "device": "m4-max", "instances": 4, "model": "llama-3.1-8b",
          "quantization": "q4_k_m", "role": "both", "max_batch": 4, "max_batch_tokens": 4096}
CLOUD = {"name": "cloud", "device": "h100-sxm", "instances": 1, "model": "llama-3.1-8b", "role": "both",
         "chips_per_instance": 1}


def trace(n=40, gap_s=0.5, prompt=300, output=50) -> Trace:
    return Trace(path="<test>", format="vidur", arrival_s=np.arange(n) * gap_s,
                 input_tokens=np.full(n, prompt, dtype=np.int64), output_tokens=np.full(n, output, dtype=np.int64))


def simulate(*pools, policy="least-loaded"):
    cl = Cluster(parse_cluster({"name": "t", "pools": list(pools), "policy": policy}))
    res = Simulation(cl, build_policy(cl.config.policy, cl.config), make_workload(trace())).run()
    return cl, res, summarize(res)


def test_facility_energy_is_board_energy_times_host_share_and_pue():
    cl, res, s = simulate(dict(CLOUD, pue=1.1), LAPTOP)
    cloud, laptops = s["pools"]["cloud"], s["pools"]["laptops"]
    assert cloud["facility_energy_j"] == pytest.approx(cloud["energy_j"] * (1 + (10.2 - 5.6) / 5.6) * 1.1)
    assert laptops["pue"] == 1.0
    assert laptops["facility_energy_j"] == pytest.approx(laptops["energy_j"] * (1 + 0.485))
    assert s["facility_energy_j"] == pytest.approx(cloud["facility_energy_j"] + laptops["facility_energy_j"])
    assert s["facility_energy_j"] > s["energy_j"]


def test_marginal_energy_of_owned_laptops_is_their_dynamic_energy_only():
    cl, res, s = simulate(CLOUD, LAPTOP)
    usage = {u.name: u for u in res.pools}
    laptops = s["pools"]["laptops"]
    assert usage["laptops"].dynamic_energy_j > 0  # they served some requests
    assert laptops["marginal_energy_j"] == pytest.approx(usage["laptops"].dynamic_energy_j * (1 + 0.485))
    assert laptops["marginal_energy_j"] < laptops["facility_energy_j"]
    # A rented GPU is provisioned for the work: its marginal energy is all of its facility energy.
    assert s["pools"]["cloud"]["marginal_energy_j"] == s["pools"]["cloud"]["facility_energy_j"]
    assert s["pools"]["cloud"]["pue"] == DEFAULT_DATACENTER_PUE


def test_own_device_pool_serves_each_user_on_their_own_device_at_batch_1():
    own = dict(LAPTOP, serving="own-device", instances=8)
    del own["max_batch"]
    cl, res, s = simulate(own)
    rec = res.records
    assert s["completed"] == 40
    np.testing.assert_array_equal(rec.prefill_instance, np.arange(40) % 8)
    assert cl.pools[0].config.max_batch == 1
    # Idle power counts only while a device serves its user: the devices are on for them anyway.
    usage = res.pools[0]
    assert usage.idle_energy_j == pytest.approx(cl.pools[0].perf.idle_power_w * usage.busy_s)


def test_pooled_laptops_pay_idle_power_for_the_whole_run():
    cl, res, s = simulate(LAPTOP)
    usage = res.pools[0]
    assert usage.idle_energy_j == pytest.approx(cl.pools[0].perf.idle_power_w * res.makespan_s * 4)


def test_own_device_requests_queue_behind_their_own_users_earlier_request():
    # Two requests of user 0 (ids 0 and 2 with 2 devices) arrive together: the second waits.
    own = dict(LAPTOP, serving="own-device", instances=2)
    del own["max_batch"]
    cl = Cluster(parse_cluster({"name": "t", "pools": [own], "policy": "least-loaded"}))
    tr = Trace(path="<test>", format="vidur", arrival_s=np.zeros(3), input_tokens=np.full(3, 300, dtype=np.int64),
               output_tokens=np.full(3, 20, dtype=np.int64))
    res = Simulation(cl, build_policy(cl.config.policy, cl.config), make_workload(tr)).run()
    ttft = res.records.ttft_s()
    assert ttft[1] == pytest.approx(ttft[0])  # user 1's device is free
    assert ttft[2] > res.records.finish_s[0] - 1e-9  # user 0's second request starts after the first ends


@pytest.mark.parametrize("extra, where, message", [
    ({"pue": 0.9}, "pools[0].pue", ">= 1"),
    ({"serving": "shared"}, "pools[0].serving", "unknown 'shared'"),
    ({"serving": "own-device", "max_batch": 4}, "pools[0].max_batch", "one at a time"),
    ({"serving": "own-device", "role": "prefill"}, "pools[0].serving", "role both"),
])
def test_bad_boundary_keys_name_the_file_and_key(extra, where, message):
    pool = dict(LAPTOP, **extra)
    if extra.get("serving") == "own-device" and "max_batch" not in extra:
        del pool["max_batch"]
    pools = [pool] if pool.get("role") == "both" else [pool, dict(CLOUD, role="decode")]
    with pytest.raises(ConfigError) as err:
        parse_cluster({"name": "t", "pools": pools}, "c.yaml")
    assert f"c.yaml: key '{where}'" in str(err.value) and message in str(err.value)


def test_int4_weights_cost_capability():
    cl = Cluster(parse_cluster({"name": "t", "pools": [LAPTOP]}))
    assert cl.pools[0].perf.model.capability == pytest.approx(0.694 * 0.961)
