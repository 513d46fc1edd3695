"""The Microsoft identity platform side of the Graph test server: tenant discovery for MSAL, the
client-credentials token endpoint (client secret or client assertion signed with a registered
certificate), access tokens, and the AADSTS-style error bodies Entra ID answers with.

Access tokens look like Entra ID's (three base64url parts, a JSON payload with ``aud``, ``tid``,
``appid``, ``roles``, ``exp``), so a client can read the granted application permissions from the
``roles`` claim as it would on a real tenant. They are signed with HS256 under a key kept in the
state directory (Entra ID signs with RS256 keys a client never verifies for Graph tokens); the
server checks signature, audience, tenant and lifetime on every Graph request.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_SCOPE = GRAPH_RESOURCE + "/.default"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"  # Microsoft Graph's own application id
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_TOKEN_LIFETIME = 3599
# The application permissions a client is granted unless withheld (--deny-permission).
DEFAULT_PERMISSIONS = (
    "Calendars.ReadWrite",
    "Contacts.ReadWrite",
    "Tasks.ReadWrite.All",
    "MailboxSettings.Read",
    "User.Read.All",
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Client:
    """An app registration: its id, secrets, registered certificates and granted permissions."""

    client_id: str
    secrets: list[str] = field(default_factory=list)
    expired_secrets: list[str] = field(default_factory=list)  # answered AADSTS7000222
    certificates: list[x509.Certificate] = field(default_factory=list)
    permissions: set[str] = field(default_factory=lambda: set(DEFAULT_PERMISSIONS))


class AadError(Exception):
    """An error the token endpoint answers with (HTTP status, OAuth error, AADSTS code, text)."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description

    def body(self) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
        return {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.description} Trace ID: {trace_id} "
                f"Correlation ID: {correlation_id} Timestamp: {now.strftime('%Y-%m-%d %H:%M:%SZ')}"
            ),
            "error_codes": [self.code],
            "timestamp": now.strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={self.code}",
        }


class TokenError(Exception):
    """A Graph request whose bearer token is missing or invalid (HTTP 401 InvalidAuthenticationToken)."""


@dataclass(frozen=True)
class Grant:
    client_id: str
    roles: frozenset[str]


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first certificate of a PEM file (a cert, or a cert with its key as MSAL takes them)."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def thumbprint(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    return cert.fingerprint(algorithm)


class Authority:
    """Tenant discovery, the token endpoint, and access-token checks for one tenant."""

    def __init__(
        self,
        state_dir: Path,
        tenant: str,
        clients: list[Client],
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
    ) -> None:
        self.tenant = tenant
        self.tenant_id = tenant if _is_guid(tenant) else str(uuid.uuid5(uuid.NAMESPACE_DNS, tenant))
        self.clients = {c.client_id.lower(): c for c in clients}
        self.token_lifetime = token_lifetime
        key_file = state_dir / "graph-token.key"
        try:  # created once, by whichever server on this state dir comes first
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        self._key = key_file.read_bytes()

    def knows_tenant(self, tenant: str) -> bool:
        return tenant.lower() in (self.tenant.lower(), self.tenant_id.lower())

    # -- discovery ---------------------------------------------------------------------------------
    def openid_configuration(self, login_url: str, tenant: str) -> dict[str, Any]:
        base = f"{login_url}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{login_url}/{self.tenant_id}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{login_url}/{self.tenant_id}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "roles"],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }

    @staticmethod
    def instance_discovery(login_url: str, authorization_endpoint: str) -> dict[str, Any]:
        """What login.microsoftonline.com/common/discovery/instance answers (MSAL's authority check)."""
        from urllib.parse import urlsplit

        host = login_url.split("://", 1)[-1]
        # MSAL names the authority by host name only (it drops the port).
        asked = urlsplit(authorization_endpoint)
        if asked.scheme != "https" or asked.hostname != urlsplit(login_url).hostname:
            return {
                "error": "invalid_instance",
                "error_description": "AADSTS50049: Unknown or invalid instance.",
                "error_codes": [50049],
            }
        tenant = asked.path.strip("/").split("/", 1)[0]
        return {
            "tenant_discovery_endpoint": f"{login_url}/{tenant}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }

    # -- token endpoint ----------------------------------------------------------------------------
    def token(self, tenant: str, form: dict[str, str], token_endpoint: str, now: float) -> dict[str, Any]:
        """The token response for a client-credentials request, or AadError."""
        if not self.knows_tenant(tenant):
            raise AadError(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud. Check with your subscription administrator, this may "
                "happen if there are no active subscriptions for the tenant.",
            )
        grant_type = form.get("grant_type", "")
        if grant_type != "client_credentials":
            raise AadError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'. This test server "
                "implements the client credentials flow only.",
            )
        client_id = form.get("client_id", "")
        if not client_id:
            raise AadError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            )
        client = self.clients.get(client_id.lower())
        if client is None:
            raise AadError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You may have "
                "sent your authentication request to the wrong tenant.",
            )
        scope = form.get("scope", "")
        scopes = scope.split()
        if scopes != [GRAPH_SCOPE] and scopes != [GRAPH_RESOURCE + "//.default"]:
            raise AadError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have "
                "a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        if "client_secret" in form:
            if any(hmac.compare_digest(form["client_secret"], s) for s in client.expired_secrets):
                raise AadError(
                    401,
                    "invalid_client",
                    7000222,
                    f"The provided client secret keys for app '{client.client_id}' are expired. Visit the "
                    "Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or "
                    "consider using certificate credentials for added security: https://aka.ms/certCreds.",
                )
            if not any(hmac.compare_digest(form["client_secret"], s) for s in client.secrets):
                raise AadError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the "
                    f"client secret value, not the client secret ID, for a secret added to app "
                    f"'{client.client_id}'.",
                )
        elif "client_assertion" in form:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise AadError(
                    400,
                    "invalid_request",
                    700023,
                    f"The client_assertion_type must be '{ASSERTION_TYPE}'.",
                )
            self._check_assertion(client, form["client_assertion"], token_endpoint, now)
        else:
            raise AadError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        return {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": self.issue(client, now),
        }

    def _check_assertion(self, client: Client, assertion: str, token_endpoint: str, now: float) -> None:
        def refuse(code: int, text: str) -> AadError:
            return AadError(401, "invalid_client", code, text)

        parts = assertion.split(".")
        try:
            if len(parts) != 3:
                raise ValueError("not three parts")
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
            if not isinstance(header, dict) or not isinstance(claims, dict):
                raise ValueError("header or claims not an object")
        except (ValueError, binascii.Error) as exc:
            raise refuse(50027, f"JWT token is invalid or malformed ({exc}).") from None
        if not client.certificates:
            raise refuse(
                700027,
                f"Client assertion contains an invalid signature. [Reason - The key was not found., "
                f"Thumbprint of key used by client: '{_header_thumbprint(header)}'] (application "
                f"'{client.client_id}' has no registered certificate)",
            )
        cert = self._certificate_for(client, header)
        if cert is None:
            raise refuse(
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found., "
                f"Thumbprint of key used by client: '{_header_thumbprint(header)}']",
            )
        signed = f"{parts[0]}.{parts[1]}".encode()
        key = cert.public_key()
        alg = header.get("alg")
        try:
            if not isinstance(key, rsa.RSAPublicKey):
                raise InvalidSignature
            if alg == "RS256":
                key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            elif alg == "PS256":
                key.verify(
                    signature,
                    signed,
                    padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
                    hashes.SHA256(),
                )
            else:
                raise refuse(5002738, f"Invalid JWT token. '{alg}' is not a supported signature algorithm.")
        except InvalidSignature:
            raise refuse(
                700027, "Client assertion contains an invalid signature. [Reason - The signature is invalid.]"
            ) from None
        if claims.get("aud") != token_endpoint:
            raise refuse(
                700212,
                f"No matching federated identity record found for presented assertion audience "
                f"'{claims.get('aud')}'. The audience must be '{token_endpoint}'.",
            )
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            raise refuse(
                700021, "Client assertion application identifier doesn't match 'client_id' parameter."
            )
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(exp, int | float) or exp <= now:
            raise refuse(700024, "Client assertion is not within its valid time range.")
        if isinstance(nbf, int | float) and nbf > now + 300:
            raise refuse(700024, "Client assertion is not within its valid time range.")

    @staticmethod
    def _certificate_for(client: Client, header: dict[str, Any]) -> x509.Certificate | None:
        # base64url, with or without padding (MSAL pads)
        x5t = str(header.get("x5t") or "").rstrip("=")
        x5t256 = str(header.get("x5t#S256") or "").rstrip("=")
        for cert in client.certificates:
            if x5t and b64url(thumbprint(cert, hashes.SHA1())) == x5t:
                return cert
            if x5t256 and b64url(thumbprint(cert, hashes.SHA256())) == x5t256:
                return cert
        if not x5t and not x5t256 and "x5c" in header:
            chain = header.get("x5c") or []
            for cert in client.certificates:
                from cryptography.hazmat.primitives.serialization import Encoding

                if chain and base64.b64encode(cert.public_bytes(Encoding.DER)).decode() == chain[0]:
                    return cert
        return None

    # -- access tokens -----------------------------------------------------------------------------
    def issue(self, client: Client, now: float) -> str:
        header = {"typ": "JWT", "alg": "HS256", "kid": "exchanged-graph-test"}
        iat = int(now)
        claims = {
            "aud": GRAPH_RESOURCE,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": iat,
            "nbf": iat,
            "exp": iat + self.token_lifetime,
            "aio": secrets.token_urlsafe(16),
            "app_displayname": f"exchanged test app {client.client_id}",
            "appid": client.client_id,
            "appidacr": "1",
            "idp": f"https://sts.windows.net/{self.tenant_id}/",
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, client.client_id)),
            "roles": sorted(client.permissions),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, client.client_id)),
            "tid": self.tenant_id,
            "uti": secrets.token_urlsafe(16),
            "ver": "1.0",
        }
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + b64url(signature)

    def check(self, authorization: str | None, now: float) -> Grant:
        """The grant a Graph request's Authorization header carries, or TokenError."""
        if not authorization:
            raise TokenError("Access token is empty.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenError("Access token is empty.")
        parts = token.strip().split(".")
        if len(parts) != 3:
            raise TokenError("IDX14100: JWT is not well formed, there are no dots (.).")
        expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            valid = hmac.compare_digest(b64url_decode(parts[2]), expected)
            claims = json.loads(b64url_decode(parts[1]))
        except (ValueError, binascii.Error):
            raise TokenError("Invalid JWT token.") from None
        if not valid or not isinstance(claims, dict):
            raise TokenError("Invalid signature.")
        if claims.get("aud") != GRAPH_RESOURCE:
            raise TokenError("Invalid audience.")
        if claims.get("tid") != self.tenant_id:
            raise TokenError("Invalid tenant.")
        if int(claims.get("exp", 0)) <= now:
            raise TokenError("Lifetime validation failed, the token is expired.")
        client = self.clients.get(str(claims.get("appid", "")).lower())
        if client is None:
            raise TokenError("Invalid application.")
        # Permissions are those granted now (admin consent changes apply to new tokens on Entra ID;
        # here to the token's own roles claim, as issued).
        return Grant(client.client_id, frozenset(claims.get("roles") or ()))


def _header_thumbprint(header: dict[str, Any]) -> str:
    value = header.get("x5t") or header.get("x5t#S256") or ""
    try:
        return b64url_decode(str(value)).hex().upper()
    except (ValueError, binascii.Error):
        return str(value)


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
