"""Bearer tokens: signed claims with scopes, for the REST API and the gateway.

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.security._auth import SCOPES, AuthError, ForbiddenError, TokenClaims, TokenSigner
    from mesh.security._token_auth import TokenAuth

__all__ = [
    "SCOPES",
    "AuthError",
    "ForbiddenError",
    "TokenAuth",
    "TokenClaims",
    "TokenSigner",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.security._auth": (
            "AuthError",
            "ForbiddenError",
            "SCOPES",
            "TokenClaims",
            "TokenSigner",
        ),
        "mesh.security._token_auth": ("TokenAuth",),
    },
)
