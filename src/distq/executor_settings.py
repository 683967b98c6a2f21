"""An :class:`~distq.executor.Executor`'s keyword arguments made into its :class:`Settings`.

``Executor(transport="redis", redis_url=...)`` names settings by their field names.
Without a ``Settings`` object the keywords go in as the text of their environment
variables, read with the environment by :meth:`Settings.load`, so a keyword is checked
and parsed exactly as its variable is; keys of bytes go in as given. Over a ``Settings``
object they replace its fields and the result is checked as :meth:`Settings.load`
checks (:func:`~distq.config.secured`). Errors name the keyword the caller gave, never
a secret's value.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from distq import credentials
from distq.addresses import host_port
from distq.config import WORKERS_ONLY, Setting, Settings, misspelled, secured
from distq.errors import ConfigError
from distq.timelimits import MAX_SECONDS, MIN_SECONDS, TimeLimits, shown_limit

log = logging.getLogger("distq.executor")

_KEYS = ("signing_keys", "signing_key")


def load_settings(
    settings: Settings | None, overrides: Mapping[str, Any], environ: Mapping[str, str]
) -> Settings:
    """``settings`` (or those of ``environ``) with ``overrides`` by field name applied.

    A string override is parsed like its environment variable; other values are taken
    as they are. A ``*_file`` override of a secret (``signing_keys_file=``) reads the
    secret from that file. Overrides of a ``Settings`` object, and the object itself, are
    then checked and put in place as :meth:`Settings.load` does (:func:`~distq.config.
    secured`): ``signing_key`` signs, passwords go into the URLs, TLS files are checked.
    Raises ``TypeError`` for a name that is not a setting and
    :class:`~distq.errors.ConfigError` for a bad value (never showing a secret's value).
    """
    entries = _entries()
    _check_names(overrides, entries)
    if settings is None:
        return _from_environment(overrides, environ, entries)
    if not isinstance(settings, Settings):  # a URL, say: dataclasses.replace() said only
        # "replace() should be called on dataclass instances"
        raise TypeError(
            f"Executor() settings must be a distq.config.Settings or None, not a "
            f"{type(settings).__name__} (not shown: a URL may hold a password); give "
            "settings by keyword: Executor(redis_url=..., queue=...), or Settings.load(...)"
        )
    return _over(settings, overrides, entries)


def _entries() -> dict[str, Setting[Any]]:
    """Every setting by its field name."""
    return {f.name: f.metadata["setting"] for f in dataclasses.fields(Settings)}


def _check_names(overrides: Mapping[str, Any], entries: Mapping[str, Setting[Any]]) -> None:
    """Refuse a keyword that is no setting; warn of one only workers read."""
    for name in overrides:
        if name not in entries:
            raise TypeError(
                f"Executor() got an unexpected keyword argument {name!r}; "
                f"settings are: {', '.join(entries)}"
            )
    for name in overrides:  # as a master given their flags says
        if entries[name].variable in WORKERS_ONLY:
            log.warning(
                "Executor keyword %s is a worker's setting: an Executor does not read it; "
                "give it to `distq worker` (%s)",
                name,
                WORKERS_ONLY[entries[name].variable],
            )


def _from_environment(
    overrides: Mapping[str, Any], environ: Mapping[str, str], entries: Mapping[str, Setting[Any]]
) -> Settings:
    """The settings of ``environ`` with ``overrides`` given as their variables' text."""
    for warning in misspelled(environ):  # as the distq command warns
        log.warning("%s", warning)
    # keys not given as a string go in as given, checked as over a Settings object
    # (a tuple of bytes): a key's bytes may hold a comma, which would split it as
    # text, and a list's text would be its repr, a wrong key signing every task. An
    # authkey of bytes goes in as given too (its text would lose whitespace at either
    # end); its text is there as well, for the checks and the environment it meets
    given = {
        n: v
        for n, v in overrides.items()
        if (n in _KEYS and not isinstance(v, str | None))
        or (n == "authkey" and isinstance(v, bytes) and v.strip())
    }
    if all(overrides.get(n) for n in _KEYS):  # one of them in each way slipped through
        raise ConfigError(
            "Executor keywords signing_key and signing_keys are both given; give "
            "signing_keys (a list whose first key signs) or signing_key (one key), not both"
        )
    for n, v in overrides.items():  # before their text: 10**5000 has none
        _checked_number(n, entries[n], v)
    texts = {
        entries[n].variable: _as_text(n, entries[n].variable, v)
        for n, v in overrides.items()
        if n not in given or n == "authkey"
    }
    # a bad value is named by the keyword the caller gave, not by the command's flag
    named = {
        entries[n].variable: f"Executor keyword {n} ({entries[n].variable})" for n in overrides
    }
    loaded = Settings.load(environ, texts, named)
    return _over(loaded, given, entries) if given else loaded


def _over(
    settings: Settings, overrides: Mapping[str, Any], entries: Mapping[str, Setting[Any]]
) -> Settings:
    """``settings`` with ``overrides`` in place of their fields, checked as loaded ones are."""
    files = {var + credentials.FILE_SUFFIX: var for var in credentials.SECRETS}
    names = {entry.variable: name for name, entry in entries.items()}
    values: dict[str, Any] = {}
    for name, value in overrides.items():
        entry = entries[name]
        if entry.variable in files and value:  # the secret it holds, as Settings.load reads it
            secret = names[files[entry.variable]]
            if overrides.get(secret):
                raise ConfigError(
                    f"{name} and {secret} are both given; give the secret one way only "
                    "(the file, for a mounted secret)"
                )
            label = f"Executor keyword {name} ({entry.variable})"
            text = credentials.read_secret(str(value), entry.variable, label, "leave it out")
            values[secret] = _parsed(f"{name}={value!r}", entries[secret], text, secret_file=True)
            values[name] = None
        elif isinstance(value, str):
            shown = name if entry.secret else f"{name}={value!r}"  # a secret never shown
            values[name] = _parsed(shown, entry, value)
        elif entry.parse == TimeLimits.parse and isinstance(value, int | float | None):
            # seconds for every task, or None (off), as without a Settings object:
            # checked as a TimeLimits, they raised "is 30, not TimeLimits"
            values[name] = _every_task(name, entry.variable, value)
        else:
            try:  # a number as its text would be: nan, inf, 10**400 or True are not
                entry.check(value)
            except ValueError as exc:
                raise ConfigError(f"Executor keyword {name} ({entry.variable}) {exc}") from None
            values[name] = value
    # a new password replaces the one the settings' password setting put into their URL
    for url, password in (("redis_url", "redis_password"), ("amqp_url", "amqp_password")):
        if password in values and url not in values and getattr(settings, password):
            values[url] = credentials.drop_password(getattr(settings, url))
    # one spelling of the signing keys replaces the other the settings had
    if values.get("signing_key") and "signing_keys" not in overrides:
        values["signing_keys"] = ()
    if values.get("signing_keys") and "signing_key" not in overrides:
        values["signing_key"] = ()
    merged = secured(dataclasses.replace(settings, **values))
    if merged.transport == "manager" and not merged.authkey:
        raise ConfigError(
            "the manager transport needs a shared secret: set authkey (DISTQ_AUTHKEY)"
        )
    return merged


def _checked_number(name: str, entry: Setting[Any], value: object) -> None:
    """Refuse a number ``value`` out of the range of the number setting ``entry``, as over
    a Settings object (:meth:`Setting.check`) and as its variable does: as its text,
    10**5000 raised Python's "Exceeds the limit (4300 digits) for integer string
    conversion"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if entry.parse == TimeLimits.parse:
        _every_task(name, entry.variable, value)
    elif entry.numeric:
        try:
            entry.check(value)
        except ValueError as exc:
            raise ConfigError(f"Executor keyword {name} ({entry.variable}) {exc}") from None


def _every_task(name: str, variable: str, seconds: float | None) -> TimeLimits:
    """``seconds`` for every task (None: off), refused as the other numbers are (read as
    its text, 10**400 was said with all its digits, and 10**5000 raised "Exceeds the
    limit (4300 digits) for integer string conversion")."""
    try:
        return TimeLimits(seconds)
    except ValueError:
        raise ConfigError(
            f"Executor keyword {name} ({variable}) is {shown_limit(seconds)}; use a number "
            f"from {MIN_SECONDS:g} to {MAX_SECONDS:g} seconds, or the variable's text: "
            "'30,square=2'"
        ) from None


def _parsed(shown: str, entry: Setting[Any], text: str, *, secret_file: bool = False) -> Any:
    """``text`` read as ``entry``'s variable (:meth:`Setting.read`; a ``secret_file``'s
    content as it is); a bad one is a :class:`ConfigError` that starts with ``shown``
    (the override, without the value of a secret)."""
    try:
        return entry.parse(text) if secret_file else entry.read(text)
    except ValueError as exc:
        raise ConfigError(f"{shown}: {entry.variable} {exc}") from None


def _as_text(name: str, variable: str, value: Any) -> str:
    """An override as the text of its environment variable (``variable``)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bytes):  # an authkey of random bytes too, as os.environb holds it
        return value.decode(errors="surrogateescape")
    try:
        if name == "manager_address" and isinstance(value, (tuple, list)) and len(value) == 2:
            # an IPv6 address in brackets, as the variable holds it
            return host_port(str(value[0]).strip("[]"), value[1])
        if isinstance(value, (bool, int, float, os.PathLike)):
            return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    except ValueError:  # an int past str()'s digits: Python's words said nothing of us
        use = (
            "use (host, port) with a port from 1 to 65535, e.g. ('127.0.0.1', 9000)"
            if name == "manager_address"
            else f"give it as a string, as {variable} takes"
        )
        raise ConfigError(
            f"Executor keyword {name} ({variable}) holds a number of more than "
            f"{sys.get_int_max_str_digits()} digits (Python's limit for its text), which is "
            f"no value {variable} takes; {use}"
        ) from None
    raise ConfigError(
        f"Executor keyword {name} ({variable}) is a {type(value).__name__}; give it as a "
        f"string, as {variable} takes"
    )
