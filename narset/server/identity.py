"""Who is calling, and what they may do: bearer tokens and client certificates, with roles and job
patterns.

With tokens configured a call carries `authorization: Bearer <token>`; the token's SHA-256 names a
`Principal`. Under mutual TLS with `client_certificates` configured, a call without a token is the
principal its client certificate names (subject common name or subject alternative name; gRPC has
already checked the certificate against the client CA). Without either (Narset on loopback, the
demo, the tests) every caller is `ANONYMOUS`, with every right. Roles: admin (everything), operator
(read, act, attach and take over jobs its patterns cover), viewer (read), worker (attach and report
for jobs its patterns cover; take over a job only once its session has gone silent).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from narset.contract import reasons
from narset.contract.limits import clip
from narset.control.credentials import digest
from narset.control.errors import Refusal
from narset.server.settings import RESERVED_PRINCIPALS, CertificateSetting, TokenSetting

__all__ = ["ANONYMOUS", "CALLER", "Authority", "Principal", "check_claimed_issuer"]

# Where gRPC's auth context names a verified client certificate: its subject CN, then its SANs.
_CERTIFICATE_NAMES = ("x509_common_name", "x509_subject_alternative_name")
_READ = frozenset({"admin", "operator", "viewer"})
_ACT = frozenset({"admin", "operator"})
_WORK = frozenset({"admin", "operator", "worker"})
# The roles each method admits; a method not listed admits readers.
_ROLES_OF_METHOD = {
    "Attach": _WORK,
    "ReportBoundary": _WORK,
    "Detach": _WORK,
    "SubmitCommand": _ACT,
    "SetPolicy": _ACT,
    "DetachJob": _ACT,
    "ListAudit": frozenset({"admin"}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its name (a command's issued_by), its role and the jobs it may act on."""

    name: str
    role: str
    jobs: tuple[str, ...]

    def covers(self, job_id: str) -> bool:
        """Whether it may act on `job_id`; "" stands for every job at once (a watch of all jobs)."""
        if self.role == "admin" or "*" in self.jobs:
            return True
        return bool(job_id) and any(fnmatch.fnmatchcase(job_id, pattern) for pattern in self.jobs)

    def may_take_over(self, job_id: str, silent_s: float, stale_after_s: float) -> bool:
        """Whether it may attach a job another session holds, that session silent for `silent_s` seconds.

        Admins and operators may (to move a job by hand). A worker token may only once the session
        has gone stale: a job restarted after a crash holds its token but not its old credential.
        """
        if not self.covers(job_id):
            return False
        return self.role in _ACT or (self.role == "worker" and silent_s >= stale_after_s)


ANONYMOUS = Principal("anonymous", "admin", ("*",))
# The caller of the RPC being served; the guard sets it before the method runs, in the method's task.
CALLER: ContextVar[Principal] = ContextVar("narset_caller", default=ANONYMOUS)


class Authority:
    """The tokens this Narset accepts, and the rules of which role may call which method on which job."""

    def __init__(self, tokens: Sequence[TokenSetting], certificates: Sequence[CertificateSetting] = ()) -> None:
        self._by_digest = {t.sha256: Principal(t.name, t.role, t.jobs) for t in tokens}
        self._by_subject = {c.subject: Principal(c.name, c.role, c.jobs) for c in certificates}

    def authenticate(
        self,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        auth_context: Mapping[str, Sequence[bytes]] | None = None,
    ) -> Principal:
        """The principal of a call's bearer token, else of its client certificate (`auth_context`, as
        gRPC gives it); a Refusal when Narset knows neither."""
        if not self._by_digest and not self._by_subject:
            return ANONYMOUS
        header = next((value for key, value in metadata or () if key == "authorization"), None)
        if not isinstance(header, str) or not header:
            return self._certificate_principal(auth_context or {})
        scheme, _, token = header.partition(" ")
        principal = self._by_digest.get(digest(token.strip())) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Refusal(reasons.TOKEN_INVALID, "authorization", "not a bearer token this Narset knows")
        return principal

    def _certificate_principal(self, auth_context: Mapping[str, Sequence[bytes]]) -> Principal:
        names = [v.decode(errors="replace") for key in _CERTIFICATE_NAMES for v in auth_context.get(key, ())]
        if not names or not self._by_subject:
            needed = "this Narset needs a bearer token: 'authorization: Bearer <token>'"
            if self._by_subject:
                needed += ", or a client certificate naming a configured subject"
            raise Refusal(reasons.TOKEN_MISSING, "authorization", needed)
        principal = next((self._by_subject[n] for n in names if n in self._by_subject), None)
        if principal is None:
            shown = ", ".join(clip(n, 80) for n in names[:4])
            raise Refusal(reasons.CERTIFICATE_UNKNOWN, "certificate", f"names no identity this Narset knows ({shown})")
        return principal

    @staticmethod
    def authorize(principal: Principal, method: str, job: tuple[str, str] | None) -> None:
        """Refuse unless `principal`'s role admits `method` and its patterns cover `job` (field, job id)."""
        roles = _ROLES_OF_METHOD.get(method, _READ)
        if principal.role not in roles:
            raise Refusal(
                reasons.ROLE_FORBIDS,
                "authorization",
                f"'{principal.name}' has role {principal.role}; {method} needs {' or '.join(sorted(roles))}",
            )
        if job is not None and not principal.covers(job[1]):
            scope = ", ".join(principal.jobs)
            target = f"job '{job[1]}'" if job[1] else "every job"
            raise Refusal(reasons.JOB_OUT_OF_SCOPE, job[0], f"'{principal.name}' may act on jobs {scope}, not {target}")


def check_claimed_issuer(field: str, claimed: str) -> None:
    """A client may state an issuer (it is only audited), but never one of Narset's own principals."""
    if claimed.startswith(RESERVED_PRINCIPALS):
        raise Refusal(
            reasons.RESERVED_ISSUER,
            field,
            f"'{claimed[:40]}' is a principal of Narset itself; a command's issuer is the caller's identity",
        )
