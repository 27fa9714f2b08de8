"""LiteLLM deployments as libspotinfer replicas (no LiteLLM import).

A LiteLLM deployment (one entry of a Router's ``model_list``) becomes one
replica of the engine. What the library needs to know about the machine
goes in the deployment's ``model_info``, under ``spotinfer``::

    - model_name: llama-70b                  # the model group: what clients ask for
      litellm_params:
        model: openai/llama-70b
        api_base: http://10.0.0.7:8000/v1
      model_info:
        id: spot-a                           # the replica id (stable across restarts)
        spotinfer:
          pool: spot                         # spot | on_demand (default on_demand)
          usd_per_hour: 1.8                  # what the replica costs
          zone: us-east-1a
          instance_type: g6e.12xlarge
          node: i-0abc                       # the machine notices name (default: the id)
          max_inflight: 64                   # sequences it serves at once (default 64)
          model_tier: large                  # small | large (default large)
          decode_tokens_per_s: 0             # 0: the engine's router.decode_tokens_per_s
          metrics_url: http://10.0.0.7:8000/metrics   # default: api_base less /v1, + /metrics; false: none

``model_info`` is where LiteLLM keeps a deployment's own facts (it is never
sent to the model server, unlike ``litellm_params``), and LiteLLM keeps it
as given, so the proxy's config.yaml and a Router's ``model_list`` say it
the same way. ``model_info.id`` is LiteLLM's deployment id and, as given,
the replica id when the library takes it (1..63 bytes of printable ASCII
without spaces). Without one, LiteLLM derives a hash of the parameters,
64 hex digits, one byte over what the library takes: such an id, and any
other the library would refuse, is given to the library in a short form
of its own (:func:`replica_id`: the id's first characters and a digest of
it), stable for that id, which the metrics and the ledger show. A derived
id changes when the parameters do; naming the deployment keeps the
library's per-replica state (prefix index, breaker, metrics labels) under
a stable name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .enums import ModelTier, Pool, coerce
from .types import ReplicaInfo

#: Keys read from model_info.spotinfer; any other key is an error, so a
#: misspelt one (``usd_per_hr``) is found at start-up, not by a wrong price.
KEYS = frozenset({"pool", "usd_per_hour", "zone", "instance_type", "node",
                  "max_inflight", "model_tier", "decode_tokens_per_s",
                  "metrics_url"})

DEFAULT_MAX_INFLIGHT = 64

#: The longest replica id the library takes, in bytes.
MAX_ID_BYTES = 63

#: The hex digits of the digest that ends a replica id made from a
#: model_info.id the library would refuse (replica_id).
_DIGEST_HEX = 16


class DeploymentError(ValueError):
    """A deployment whose spotinfer settings cannot be read; the message
    names the deployment and the key."""


@dataclass(frozen=True)
class Replica:
    """One deployment as the engine sees it."""

    info: ReplicaInfo
    model_group: str
    metrics_url: Optional[str]     # None: the strategy reports load itself
    model_id: str = ""             # model_info.id, as LiteLLM has it


def _get(obj: Any, key: str) -> Any:
    """A key of a dict or an attribute of a pydantic model (LiteLLM hands
    out either, depending on the call)."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def default_metrics_url(api_base: Optional[str]) -> Optional[str]:
    """vLLM and SGLang serve /metrics at the server's root, beside /v1."""
    if not api_base:
        return None
    base = str(api_base).rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base + "/metrics"


def _number(where: str, key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DeploymentError(f"{where}: {key} must be a number, not {value!r}")
    try:
        out = kind(value)
    except ValueError:
        raise DeploymentError(f"{where}: {key} must be a number, not {value!r}") from None
    if out < 0:
        raise DeploymentError(f"{where}: {key} must not be negative")
    return out


def _metrics_url(where: str, settings: Mapping[str, Any], api_base: Any) -> Optional[str]:
    if "metrics_url" not in settings:
        return default_metrics_url(api_base)
    url = settings["metrics_url"]
    if url is False or url is None or url == "":
        return None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise DeploymentError(f"{where}: metrics_url must be an http(s) URL or false, not {url!r}")
    return url


def _escaped(text: str, chars: str, edges: str = "") -> str:
    """text with "%" and each of chars percent-encoded, and so are the
    characters of edges at either end of it."""
    head = len(text) - len(text.lstrip(edges)) if edges else 0
    tail = len(text.rstrip(edges)) if edges else len(text)
    return "".join(f"%{ord(c):02X}" if c == "%" or c in chars or not head <= i < tail
                   else c for i, c in enumerate(text))


def library_name(name: str) -> str:
    """A model name as the library is given it, in a replica's models list
    and as a request's model. That list is one string, the names separated
    by commas, each trimmed of spaces and tabs, so a comma in a name (and a
    space or tab at either end of it) is percent-encoded, and so is "%"
    (which keeps two names apart once encoded). A name without them is
    given as it is, so the library's metrics and cost ledger show it."""
    return _escaped(name, ",", edges=" \t")


def team_model_name(team_id: str, public_name: str) -> str:
    """The model name a team's deployments are served under in the library
    for the team's public name of them: scoped to the team, because the
    public name is often a global group's too (a team's own "llama" beside
    the proxy's), and LiteLLM resolves the team's requests for it to the
    team's deployments and everyone else's to the global group's. A "/" in
    the team id is percent-encoded (and "%"), so the id ends at the first
    "/": team "a/b" with name "c" and team "a" with name "b/c" are apart."""
    return f"team:{_escaped(team_id, '/')}/{public_name}"


def served_names(deployment: Any) -> Tuple[str, ...]:
    """The model names a deployment is served under in the library: its
    model_name (the model group, or a wildcard group's pattern such as
    ``openai/*``) and, for a team's deployment, the team's public name for
    it scoped to the team (:func:`team_model_name`; its model_name is then
    LiteLLM's internal one). A public name without a team_id is not one
    LiteLLM serves it under."""
    group = _get(deployment, "model_name")
    names = (str(group),) if group else ()
    info = _get(deployment, "model_info")
    team, public = _get(info, "team_id"), _get(info, "team_public_model_name")
    if team and public:
        names += (team_model_name(str(team), str(public)),)
    return names


def model_group(deployments: Any) -> str:
    """The model name a request goes to the library with, from the
    deployments LiteLLM resolved it to (an alias to its target group, a
    name no group has to the wildcard group matching it, a team's public
    name to the team's deployments): a name every one of them is served
    under, so the library picks among exactly their replicas (a team's
    among the team's, under its team-scoped name; anyone else's among the
    global group's, which no team deployment serves). Deployments of
    several groups (a LiteLLM routing group over model groups) have none
    in common; the first one's group is taken (LiteLLM lists a priority
    group's members in order). As the library is given it
    (:func:`library_name`); "" for none: any replica."""
    names = [served_names(d) for d in deployments or ()]
    if not names or not names[0]:
        return ""
    common = [n for n in names[0] if all(n in other for other in names[1:])]
    return library_name(common[0] if common else names[0][0])


def _library_takes(rid: str) -> bool:
    return 0 < len(rid) <= MAX_ID_BYTES and all("!" <= c <= "~" for c in rid)


def replica_id(model_id: str) -> str:
    """The replica id of the deployment whose model_info.id is model_id:
    model_id itself when the library takes it (1..63 bytes of printable
    ASCII without spaces). Else (LiteLLM's derived ids are 64 hex digits;
    a name may have spaces or other characters) a form the library takes,
    the same for the same model_id: its first 46 characters, each outside
    that range as "_", then "~" and 16 hex digits of the SHA-256 of its
    UTF-8, 63 bytes at most. Two model_info.ids with one replica id (a
    digest's collision, or an id chosen to look like such a form) are
    refused by replicas_of."""
    if _library_takes(model_id):
        return model_id
    head_len = MAX_ID_BYTES - 1 - _DIGEST_HEX
    head = "".join(c if "!" <= c <= "~" else "_" for c in model_id[:head_len])
    digest = hashlib.sha256(model_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{head}~{digest[:_DIGEST_HEX]}"


def deployment_id(deployment: Any) -> Optional[str]:
    """A deployment's replica id (replica_id of its model_info.id), None
    without one."""
    rid = _get(_get(deployment, "model_info"), "id")
    return replica_id(str(rid)) if rid else None


def replica_of(deployment: Any) -> Replica:
    """Read one deployment (a dict of ``model_list`` or LiteLLM's
    Deployment model). Raises DeploymentError on a bad setting."""
    model_info = _get(deployment, "model_info") or {}
    params = _get(deployment, "litellm_params") or {}
    group = _get(deployment, "model_name")
    model_id = _get(model_info, "id")
    if not model_id:
        raise DeploymentError(f"deployment of {group!r} has no model_info.id")
    model_id = str(model_id)
    rid = replica_id(model_id)
    where = f"deployment {model_id!r} (model_info.spotinfer)"
    settings = _get(model_info, "spotinfer") or {}
    if not isinstance(settings, Mapping):
        raise DeploymentError(f"{where}: must be a mapping, not {type(settings).__name__}")
    unknown = sorted(set(settings) - KEYS)
    if unknown:
        raise DeploymentError(f"{where}: unknown key {unknown[0]!r} "
                              f"(known: {', '.join(sorted(KEYS))})")
    try:
        pool = Pool(coerce(Pool, settings.get("pool", "on_demand")))
        tier = ModelTier(coerce(ModelTier, settings.get("model_tier", "large")))
    except (ValueError, TypeError) as e:
        raise DeploymentError(f"{where}: {e}") from None
    if pool not in (Pool.SPOT, Pool.ON_DEMAND):
        raise DeploymentError(f"{where}: pool must be spot or on_demand")
    max_inflight = _number(where, "max_inflight",
                           settings.get("max_inflight", DEFAULT_MAX_INFLIGHT), int)
    if max_inflight < 1:
        raise DeploymentError(f"{where}: max_inflight must be at least 1")
    if "usd_per_hour" not in settings:
        raise DeploymentError(f"{where}: usd_per_hour is missing (what the "
                              "replica costs an hour, more than 0)")
    usd = _number(where, "usd_per_hour", settings["usd_per_hour"], float)
    if not usd > 0:
        raise DeploymentError(f"{where}: usd_per_hour must be more than 0, not {usd!r}")
    info = ReplicaInfo(
        id=rid, pool=pool, model_tier=tier,
        usd_per_hour=usd,
        max_inflight=max_inflight,
        zone=str(settings.get("zone", "")),
        instance_type=str(settings.get("instance_type", "")),
        node=str(settings.get("node", "")),
        models=tuple(library_name(n) for n in served_names(deployment)),
        decode_tokens_per_s=_number(where, "decode_tokens_per_s",
                                    settings.get("decode_tokens_per_s", 0.0), float))
    return Replica(info, str(group or ""),
                   _metrics_url(where, settings, _get(params, "api_base")), model_id)


def read_replicas(model_list: Any) -> Tuple[Tuple[Replica, ...], Tuple[DeploymentError, ...]]:
    """The deployments of a model list that can be read, each on its own,
    and an error for each of the others, naming it: a bad setting, an id
    an earlier deployment has (the later one is left out), or a team's
    name that is another deployment's model_name (a team-scoped name
    that is some group's too would put the team's replicas and that
    group's in one choice again)."""
    out: List[Replica] = []
    errors: List[DeploymentError] = []
    seen: Dict[str, str] = {}
    for dep in model_list or ():
        try:
            r = replica_of(dep)
        except DeploymentError as e:
            errors.append(e)
            continue
        other = seen.get(r.info.id)
        if other == r.model_id:
            errors.append(DeploymentError(f"two deployments have model_info.id {r.model_id!r}"))
            continue
        if other is not None:
            errors.append(DeploymentError(
                f"deployments {other!r} and {r.model_id!r} have one replica id, "
                f"{r.info.id!r}: name one otherwise"))
            continue
        seen[r.info.id] = r.model_id
        out.append(r)
    groups = {library_name(r.model_group) for r in out}
    kept = []
    for r in out:
        clash = next((n for n in r.info.models[1:] if n in groups), None)
        if clash is not None:
            errors.append(DeploymentError(
                f"deployment {r.model_id!r}: its team's name {clash!r} is "
                "another deployment's model_name"))
            continue
        kept.append(r)
    return tuple(kept), tuple(errors)


def replicas_of(model_list: Any) -> Tuple[Replica, ...]:
    """Every deployment of a model list; raises the first DeploymentError
    read_replicas finds (two with one id among them)."""
    reps, errors = read_replicas(model_list)
    if errors:
        raise errors[0]
    return reps
