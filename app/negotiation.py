"""Accept-header negotiation (RFC 9110 media ranges with q-values), no dependencies."""

from __future__ import annotations


def _ranges(accept: str) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        out.append((media.lower(), q))
    return out


def _match(media_range: str, offered: str) -> int:
    """Specificity of a match (3 exact, 2 type/*, 1 */*), 0 if none."""
    if media_range == offered:
        return 3
    kind, _, sub = media_range.partition("/")
    if sub == "*" and offered.startswith(kind + "/"):
        return 2
    return 1 if media_range == "*/*" else 0


def choose_media(accept: str | None, offered: list[str]) -> str | None:
    """The offered type the client prefers; the first offered for a missing or */* header.

    Returns None when nothing offered is acceptable (the caller answers 406).
    """
    if not accept or not accept.strip():
        return offered[0]
    best: tuple[float, int, int] | None = None  # (q, specificity, -offer order)
    choice = None
    for i, media in enumerate(offered):
        # The most specific range matching this type decides its q (RFC 9110 12.5.1).
        matches = [(spec, q) for r, q in _ranges(accept) if (spec := _match(r, media))]
        if not matches:
            continue
        spec, q = max(matches)
        if q <= 0:
            continue
        key = (q, 0, -i)  # order among equal q: the server's preference
        if best is None or key > best:
            best, choice = key, media
    return choice
