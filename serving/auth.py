"""Who may call the gateway: JWTs signed with an HS256 secret (at least 32 bytes) or verified by
an RS256 public key, with ``sub`` and ``exp`` required, and optionally a fixed issuer and
audience and a maximum remaining lifetime (a stolen long-lived token is refused)."""
from __future__ import annotations

import dataclasses
import time

import jwt

from serving.limits import Rejected

MIN_HMAC_KEY_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as its hash
INVALID = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def load_key(text: str, origin: str) -> str:
    """The key in ``text`` (a key file's or variable's content, ``origin`` names it), stripped
    of surrounding whitespace; ``ValueError`` for an HMAC secret under 32 bytes."""
    key = text.strip()
    if not is_public_key(key) and len(key.encode()) < MIN_HMAC_KEY_BYTES:
        raise ValueError(f"{origin}: an HS256 secret needs at least {MIN_HMAC_KEY_BYTES} "
                         f"bytes, this one has {len(key.encode())}")
    return key


def is_public_key(key: str) -> bool:
    return key.startswith("-----BEGIN")


@dataclasses.dataclass(frozen=True)
class TokenPolicy:
    """What a token must carry: signed by ``key``; ``issuer`` and ``audience`` when set; an
    ``exp`` at most ``max_lifetime`` seconds ahead (0: any)."""

    key: str
    issuer: str = ""
    audience: str = ""
    max_lifetime: float = 86400.0

    def claims(self, authorization: str) -> dict:
        """The verified claims of an ``Authorization: Bearer`` header value; 401 otherwise."""
        if not authorization.lower().startswith("bearer "):
            raise Rejected(401, "no_token", "missing bearer token",
                           {"WWW-Authenticate": "Bearer"})
        # The key decides the algorithm: a public key never verifies an HMAC-signed token.
        algorithm = "RS256" if is_public_key(self.key) else "HS256"
        try:
            claims = jwt.decode(authorization[7:].strip(), self.key, algorithms=[algorithm],
                                issuer=self.issuer or None, audience=self.audience or None,
                                options={"require": ["exp", "sub"],
                                         "verify_aud": bool(self.audience)})
        except jwt.ExpiredSignatureError:
            raise Rejected(401, "expired_token", "token expired", INVALID) from None
        except jwt.PyJWTError as err:
            raise Rejected(401, "invalid_token", f"invalid token: {err}", INVALID) from None
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise Rejected(401, "invalid_token", "invalid token: sub must be a non-empty string",
                           INVALID)
        if isinstance(claims["exp"], bool) or not isinstance(claims["exp"], (int, float)):
            raise Rejected(401, "invalid_token", "invalid token: exp must be a number", INVALID)
        if self.max_lifetime and claims["exp"] - time.time() > self.max_lifetime:
            raise Rejected(401, "invalid_token", f"invalid token: it expires more than "
                           f"{self.max_lifetime:g} s from now", INVALID)
        return claims
