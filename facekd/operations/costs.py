"""What a gated erasure step costs people other than the erased, for the receipt's ``model``:
everyone enrolled (``others_touched``) and people enrolled after it (``strangers_touched``).

Both are shares read off a sample, and each gets the interval its sample allows. A gate opens on
people more than on photos (a look-alike's photos score alike), so the bound for people enrolled
later counts the identities it was read off, not their faces: on LFW the face-count interval left
the share really changed above its top in 154 of 1,440 erasures, the identity count in 6
(docs/benchmarks.md, "Fifteenth round"). Everyone else's figure, held out by face, errs high
(0.23-0.32 % read where 0.04-0.08 % changed) and was never below the truth there.
"""

from __future__ import annotations

from facekd.core.erasure import Erasure
from facekd.core.metrics import wilson_interval
from facekd.state import receipt as rc

__all__ = ["gate_costs", "later_bound"]


def later_bound(params: dict) -> float | None:
    """The top of the 95 % Wilson interval of ``params["strangers_touched"]`` counted over the
    ``strangers_touched_people`` identities it was read off (over its faces for a step fitted
    before facekd counted them, or without identities); None without a figure."""
    share = params.get("strangers_touched")
    n = int(params.get("strangers_touched_people") or params.get("strangers_touched_faces") or 0)
    if share is None or not n:
        return None
    return float(wilson_interval(float(share) * n, n)[1])


def gate_costs(ledger: list[dict], new: Erasure) -> dict:
    """What a gated step costs everyone else, alone and with the ledger's earlier steps: the share
    of their new photos its gate opens on (``params["others_touched"]``, held out by face, with
    its 95 % Wilson interval over the faces it was read off), the sum over the ledger's entries and
    this step (gates seldom open on the same photo), and for people enrolled later the same
    (``strangers_touched``, ``_total``, ``_uncounted``) with the bound above
    (``strangers_touched_bound``). ``others_touched_uncounted``: earlier gated entries that carry
    no figure (committed before facekd measured it). ``{}`` for a step that is not gated."""
    params = new.params or {}
    share = params.get("others_touched")
    if share is None:
        return {}
    earlier, _, uncounted = rc.ledger_others_touched(ledger)
    n = int(params.get("others_touched_faces") or 0)
    costs = {"others_touched": float(share),
             # a share of the n gallery faces it was read off: on a gallery of tens of people,
             # "none" can still mean a few percent (measured, it errs high: docs/benchmarks.md)
             "others_touched_interval": list(wilson_interval(share * n, n)) if n else None,
             "others_touched_total": float(share) + earlier,
             "others_touched_uncounted": uncounted}
    later = params.get("strangers_touched")
    if later is None:
        return costs
    # People enrolled later meet every gate in the ledger, none of which spares them.
    earlier, _, uncounted = rc.ledger_others_touched(ledger, "strangers_touched")
    return costs | {"strangers_touched": float(later),
                    "strangers_touched_bound": later_bound(params),
                    "strangers_touched_total": float(later) + earlier,
                    "strangers_touched_uncounted": uncounted}
