"""LiteLLM deployments read as replicas (spotinfer.litellm_deployments needs
no LiteLLM; the strategy itself is tested in tests/litellm)."""

import json

import pytest

from spotinfer import Engine, ModelTier, Pool
from spotinfer.litellm_deployments import (DeploymentError, default_metrics_url,
                                           deployment_id, library_name, model_group,
                                           read_replicas, replica_id, replica_of,
                                           replicas_of, served_names, team_model_name)

from conftest import needs_routing


def dep(rid="spot-a", api_base="http://10.0.0.7:8000/v1", **settings):
    settings.setdefault("usd_per_hour", 1.0)  # required: the library prices it
    d = {"model_name": "llama-70b",
         "litellm_params": {"model": "openai/llama-70b", "api_base": api_base},
         "model_info": {"id": rid, "spotinfer": settings}}
    return d


def test_a_full_entry():
    r = replica_of(dep(pool="spot", usd_per_hour=1.8, zone="us-east-1a",
                       instance_type="g6e.12xlarge", node="i-0abc", max_inflight=32,
                       model_tier="small", decode_tokens_per_s=40,
                       metrics_url="http://10.0.0.7:9000/metrics"))
    i = r.info
    assert (i.id, i.pool, i.usd_per_hour, i.zone, i.instance_type, i.node) == \
        ("spot-a", Pool.SPOT, 1.8, "us-east-1a", "g6e.12xlarge", "i-0abc")
    assert (i.max_inflight, i.model_tier, i.decode_tokens_per_s) == (32, ModelTier.SMALL, 40.0)
    assert i.models == ("llama-70b",)
    assert r.model_group == "llama-70b"
    assert r.metrics_url == "http://10.0.0.7:9000/metrics"


def test_defaults():
    r = replica_of(dep())
    assert (r.info.pool, r.info.usd_per_hour, r.info.max_inflight, r.info.model_tier) == \
        (Pool.ON_DEMAND, 1.0, 64, ModelTier.LARGE)
    assert r.info.node == "" and r.info.zone == ""
    # vLLM serves /metrics beside /v1.
    assert r.metrics_url == "http://10.0.0.7:8000/metrics"


@pytest.mark.parametrize("base,url", [
    ("http://h:8000/v1", "http://h:8000/metrics"),
    ("http://h:8000/v1/", "http://h:8000/metrics"),
    ("http://h:8000", "http://h:8000/metrics"),
    ("https://h/serving/v1", "https://h/serving/metrics"),
    (None, None), ("", None)])
def test_default_metrics_url(base, url):
    assert default_metrics_url(base) == url


def test_no_metrics_url():
    assert replica_of(dep(metrics_url=False)).metrics_url is None
    assert replica_of(dep(api_base=None)).metrics_url is None


@pytest.mark.parametrize("settings,needle", [
    ({"usd_per_hr": 1.8}, "unknown key 'usd_per_hr'"),
    ({"pool": "preemptible"}, "unknown Pool"),
    ({"pool": "queue"}, "pool must be spot or on_demand"),
    ({"usd_per_hour": "cheap"}, "usd_per_hour must be a number"),
    ({"usd_per_hour": -1}, "usd_per_hour must not be negative"),
    ({"usd_per_hour": 0}, "usd_per_hour must be more than 0"),
    ({"max_inflight": 0}, "max_inflight must be at least 1"),
    ({"max_inflight": True}, "max_inflight must be a number"),
    ({"metrics_url": "10.0.0.7/metrics"}, "metrics_url must be an http(s) URL"),
])
def test_bad_settings_name_the_deployment_and_key(settings, needle):
    with pytest.raises(DeploymentError) as ei:
        replica_of(dep(**settings))
    assert "'spot-a'" in str(ei.value)
    assert needle in str(ei.value)


def test_settings_must_be_a_mapping():
    d = dep()
    d["model_info"]["spotinfer"] = ["spot"]
    with pytest.raises(DeploymentError, match="must be a mapping"):
        replica_of(d)


def test_an_id_is_required_and_unique():
    d = dep()
    del d["model_info"]["id"]
    with pytest.raises(DeploymentError, match="no model_info.id"):
        replica_of(d)
    with pytest.raises(DeploymentError, match="two deployments have model_info.id 'x'"):
        replicas_of([dep("x"), dep("x")])


def test_read_replicas_reads_each_deployment_on_its_own():
    """What a strategy reads at run time: the deployments that can be read,
    and an error naming each of the others; replicas_of raises the first."""
    priced = {"spotinfer": {"usd_per_hour": 1}}
    team = {"model_name": "llama_t_a",
            "model_info": {"id": "t", "team_id": "t1", "team_public_model_name": "g",
                           **priced}}
    deps = [dep("a"), dep("bad", usd_per_hour="cheap"), dep("a"), dep("b"), team,
            {"model_name": "team:t1/g", "model_info": {"id": "g", **priced}}]
    reps, errors = read_replicas(deps)
    assert [r.info.id for r in reps] == ["a", "b", "g"]
    assert ["'bad'" in str(errors[0]), "model_info.id 'a'" in str(errors[1]),
            "'t'" in str(errors[2])] == [True, True, True]
    with pytest.raises(DeploymentError, match="'bad'"):
        replicas_of(deps)


def test_pydantic_like_objects_are_read_too():
    class Obj:
        def __init__(self, **kw):
            self.__dict__.update(kw)
    d = Obj(model_name="m", litellm_params=Obj(api_base="http://h/v1"),
            model_info=Obj(id="od-1", spotinfer={"pool": "on_demand", "usd_per_hour": 4.5}))
    r = replica_of(d)
    assert (r.info.id, r.info.pool, r.metrics_url) == ("od-1", Pool.ON_DEMAND, "http://h/metrics")


def test_the_engine_takes_what_is_read():
    with Engine() as e:
        for r in replicas_of([dep("spot-a", pool="spot", usd_per_hour=1.8),
                              dep("od-1", usd_per_hour=4.5)]):
            e.upsert_replica(r.info)
        assert [(s.id, s.pool) for s in e.replicas()] == \
            [("spot-a", Pool.SPOT), ("od-1", Pool.ON_DEMAND)]


def test_a_price_is_required():
    """The library takes no replica without a price, so a deployment
    without one is named here rather than failing at install."""
    d = dep()
    del d["model_info"]["spotinfer"]["usd_per_hour"]
    with pytest.raises(DeploymentError) as ei:
        replica_of(d)
    assert "usd_per_hour is missing" in str(ei.value)


def named(model_name, rid="r", **model_info):
    return {"model_name": model_name, "model_info": {"id": rid, **model_info}}


def test_the_names_a_deployment_is_served_under():
    assert served_names(named("llama-70b")) == ("llama-70b",)
    assert served_names(named("openai/*")) == ("openai/*",)
    # A team's deployment: LiteLLM's internal name and the team's public
    # one, scoped to the team (a global group often has that name too).
    team = named("llama_team1_abc", team_id="team1", team_public_model_name="llama")
    assert served_names(team) == ("llama_team1_abc", "team:team1/llama")
    assert team_model_name("team1", "llama") == "team:team1/llama"
    assert replica_of({**team, "model_info": {**team["model_info"],
                                              "spotinfer": {"usd_per_hour": 1}}}
                      ).info.models == ("llama_team1_abc", "team:team1/llama")
    # A public name without a team is none LiteLLM serves it under.
    assert served_names(named("llama_x", team_public_model_name="llama")) == ("llama_x",)
    assert served_names({"model_info": {"id": "x"}}) == ()


def test_the_group_a_request_goes_to_the_library_with():
    assert model_group([named("fake-*", "a"), named("fake-*", "b")]) == "fake-*"
    # A team's deployments have internal names of their own: the team's
    # public one, scoped, and never the global group's of that name.
    team = [named(f"llama_team1_{i}", i, team_id="team1", team_public_model_name="llama")
            for i in "ab"]
    assert model_group(team) == "team:team1/llama"
    assert model_group([named("llama", "g")]) == "llama"
    # Several groups (a LiteLLM routing group): the first one's.
    assert model_group([named("small", "a"), named("large", "b")]) == "small"
    assert model_group([]) == ""


def test_a_team_name_that_is_a_group_name_is_refused():
    def priced(d):
        return {**d, "model_info": {**d["model_info"], "spotinfer": {"usd_per_hour": 1}}}
    team = priced(named("llama_team1_a", "t", team_id="team1", team_public_model_name="llama"))
    with pytest.raises(DeploymentError) as ei:
        replicas_of([team, priced(named("team:team1/llama", "g"))])
    assert "'t'" in str(ei.value) and "team:team1/llama" in str(ei.value)


def test_a_deployment_id():
    assert deployment_id(named("m", "spot-a")) == "spot-a"
    assert deployment_id({"model_name": "m"}) is None


def test_an_id_the_library_would_refuse_has_a_short_stable_form():
    """LiteLLM gives a deployment without model_info.id a hash of its
    parameters, 64 hex digits; the library takes replica ids of 1..63
    bytes of printable ASCII without spaces. Such an id (and a name with a
    space or other characters) is given to the library in a form it
    takes, the same each time, and deployment_id gives the same one, so
    the deployments LiteLLM offers are found among the replicas."""
    derived = "0123456789abcdef" * 4
    rid = replica_id(derived)
    assert len(rid.encode()) <= 63 and rid.startswith(derived[:46] + "~")
    assert rid == replica_id(derived) != replica_id(derived[:-1] + "0")
    for odd in ("my replica", "réplica-1", "x" * 64, "tab\there"):
        r = replica_id(odd)
        assert 0 < len(r.encode()) <= 63 and all("!" <= c <= "~" for c in r), odd
    assert replica_id("x" * 63) == "x" * 63 and replica_id("spot-a") == "spot-a"
    d = dep(derived)
    r = replica_of(d)
    assert (r.info.id, r.model_id) == (rid, derived)
    assert deployment_id(d) == rid
    with Engine() as e:
        e.upsert_replica(r.info)
        e.upsert_replica(replica_of(dep("my replica")).info)
        assert [s.id for s in e.replicas()] == [rid, replica_id("my replica")]


def test_two_ids_with_one_replica_id_are_refused():
    """An id that is the short form of another deployment's id (chosen so,
    or a digest's collision) would make two deployments one replica."""
    derived = "f" * 64
    with pytest.raises(DeploymentError) as ei:
        replicas_of([dep(derived), dep(replica_id(derived))])
    assert derived in str(ei.value) and "one replica id" in str(ei.value)


def test_library_names():
    # As they are: the names the metrics and the ledger show.
    for name in ("llama-70b", "openai/*", "a b", "team:team1/llama", ""):
        assert library_name(name) == name
    # What the models list would split or trim, and the escape itself.
    assert library_name("llama,70b") == "llama%2C70b"
    assert library_name(" llama\t") == "%20llama%09"
    assert library_name("50%") == "50%25"
    assert library_name("a%2Cb") != library_name("a,b")
    # A team id ends at its first "/".
    assert team_model_name("a/b", "c") != team_model_name("a", "b/c")


@needs_routing
def test_a_comma_in_a_name_keeps_its_deployments_apart():
    """A model_name or a team id with a comma: the library's models list
    separates names with commas, so unencoded "llama,70b" would serve
    "llama" and "70b" and never itself."""
    def priced(name, rid, **model_info):
        return {"model_name": name,
                "model_info": {"id": rid, "spotinfer": {"usd_per_hour": 1}, **model_info}}
    comma = priced("llama,70b", "comma")
    plain = [priced("llama", "llama"), priced("70b", "70b"), priced(" llama ", "padded")]
    team = [priced(f"llama_t_{i}", f"team-{i}", team_id="t,1", team_public_model_name="llama")
            for i in "ab"]
    with Engine({"router": {"load_max_age_ms": 600000, "max_fallbacks": 4}}) as eng:
        for r in replicas_of([comma, *plain, *team]):
            eng.upsert_replica(r.info)
            eng.report_load(r.info.id, running=0)

        def served(deps):
            body = {"model": model_group(deps), "messages": [{"role": "user", "content": "hi"}]}
            d = eng.parse_openai(json.dumps(body).encode(), "chat").route()
            eng.ticket(d.ticket.id).finish()
            return {d.replica_id, *d.fallback_ids}
        assert served([comma]) == {"comma"}
        assert served([plain[0]]) == {"llama"}
        assert served([plain[1]]) == {"70b"}
        assert served([plain[2]]) == {"padded"}
        # The team's name for its deployments: one of them, of no other.
        assert model_group(team) == "team:t%2C1/llama"
        assert served(team) == {"team-a", "team-b"}
