"""Where a cloud sink keeps its objects: the bucket (or container), key prefix and options its URI names.

`s3://`, `gs://` and `az://` URIs share one shape, `scheme://bucket/prefix?option=value&...`, and one
set of rules: no credentials (they come from the environment), no fragment, a prefix that is a safe
key, and each known option once, with a value. A backend brings its bucket naming rule and its
options, and checks the options' values itself.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from sinks.base import redact_url, validate_key
from sinks.errors import InvalidKey, SinkConfigError


@dataclass(frozen=True, slots=True)
class BucketLocation:
    """What a cloud sink URI names: a bucket, a key prefix ('' or ending in '/'), and the options given."""

    scheme: str
    bucket: str
    prefix: str
    options: Mapping[str, str]

    @property
    def url(self) -> str:
        """The bucket and prefix as a URI, without the options."""
        return bucket_url(self.scheme, self.bucket, self.prefix)


def bucket_url(scheme: str, bucket: str, prefix: str) -> str:
    """`scheme://bucket/prefix`, the prefix percent-encoded (so the URI parses back to it) and without
    its trailing '/'; `scheme://bucket` when there is no prefix."""
    path = quote(prefix.removesuffix("/"))
    return f"{scheme}://{bucket}/{path}" if path else f"{scheme}://{bucket}"


def parse_bucket_uri(
    uri: str,
    *,
    scheme: str,
    what: str,
    name_pattern: re.Pattern[str],
    name_rule: str,
    credentials_hint: str,
    options: Collection[str],
    sink: str | None = None,
) -> BucketLocation:
    """The location `scheme://bucket/prefix?options` names, or SinkConfigError saying what is wrong.

    `what` is what the host part names ("bucket", "container"): a name `name_pattern` matches in full,
    which `name_rule` describes. `credentials_hint` says where credentials come from instead, and
    `options` are the query options the backend knows. Errors show `sink`, by default the redacted URI.
    """
    shown = redact_url(uri) if sink is None else sink
    try:
        parts = urlsplit(uri)
    except ValueError as err:
        raise SinkConfigError(f"not a valid URI: {err}", sink=shown) from None
    if parts.scheme.lower() != scheme:
        raise SinkConfigError(f"the URI must start with {scheme}://", sink=shown)
    # User info holding a '/' (base64 keys do) is what urlsplit takes for the path: look there too, as
    # redact_url does. A prefix can still hold an '@', written %40.
    if "@" in parts.netloc or "@" in parts.path:
        detail = f"the URI takes no credentials (an '@' in the prefix is written %40): {credentials_hint}"
        raise SinkConfigError(detail, sink=shown)
    if not name_pattern.fullmatch(parts.netloc):
        detail = f"the {what} name must be {name_rule}: {scheme}://{what.upper()}/prefix"
        raise SinkConfigError(detail, sink=shown)
    if parts.fragment:
        raise SinkConfigError("the URI takes no #fragment", sink=shown)
    prefix = unquote(parts.path).removeprefix("/").removesuffix("/")
    if prefix:
        try:
            validate_key(prefix, sink=shown)
        except InvalidKey as err:
            raise SinkConfigError(f"the key prefix is not usable: {err.detail}", sink=shown) from None
        prefix += "/"
    given: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in options:
            known = ", ".join(f"{option}=" for option in options)
            raise SinkConfigError(f"unknown option {name!r}; the URI takes {known}", sink=shown)
        if name in given:
            raise SinkConfigError(f"option {name!r} is given twice", sink=shown)
        if not value:
            raise SinkConfigError(f"option {name!r} needs a value", sink=shown)
        given[name] = value
    return BucketLocation(scheme, parts.netloc, prefix, given)
