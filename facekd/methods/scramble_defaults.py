"""The gated scramble's measured defaults: the grids its fit searches, the gallery budget, the
hinge widths, whom a gate spares and the look-alike guard's opt-in setting, each with what chose
it. What the number of the person's photos sets lives here too (:func:`q_ladder`,
:func:`ridge_grid`, :func:`budget`, :func:`hinge_width`, :func:`spare_quantile`,
:func:`walks_the_budget`), so the photo-count rules are read in one place.

Pure: imports nothing (numbers and the rules above, shared by :mod:`facekd.methods.scramble` and
anything that reports on it). Every number here was picked on LFW + dlib by ``facekd bench`` and
``benchmarks/``; docs/benchmarks.md holds the runs.
"""

from __future__ import annotations

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # fit_scramble's choices when ridge=None
# With one photo, 0.1 is left out. Its cover estimate (held-out identities' one-photo gates) is
# miscalibrated: the strongest ridge flattens the discriminant until nearly every held-out pair
# clears its gate, while the person's own new photos sit below it (LFW + dlib, 40 people, one
# photo: estimated 99 %, real 0 %). Five draws, re-enrolment rank-1 over 200 splits: 40 people
# 14.4 -> 6.0 % (people over 2x chance 21 -> 16 of 60), 15 people 9.5 -> 3.5 % (8 -> 4), 158
# people 4.7 -> 4.3 %; FaceNet about the same (docs/benchmarks.md, "Five draws"). 2+ photos never
# chose 0.1 there, and keep it.
RIDGE_GRID_ONE = RIDGE_GRID[:3]
# One photo where nobody in the gallery has two (an ID-photo gallery): no within-identity prior
# and no pair of photos to choose a ridge by, so this one, and no walk: the gate opens at Q_ONE.
# A budget read off single photos let gates widen until they met someone's one photo; that cost
# everyone else little alone but added up (LFW, 62 people with one photo each, 20 erased one
# after another, 5 draws: rank-1 lost 1.49 points on dlib, 4.70 on FaceNet; at Q_ONE 0.18 and
# 0.68), while each erased alone was found at 10.3 -> 13.1 % (dlib) and 7.4 -> 8.0 % (FaceNet),
# against 11.4 / 12.0 % after a perfect erasure. Ridge at Q_ONE, re-enrolment rank-1 alone with
# 1e-3 / 1e-2 / 1e-1: dlib 13.2 / 13.1 / 26.2 %, FaceNet 15.4 / 8.0 / 9.4 %
# (docs/benchmarks.md, "ID-photo galleries").
RIDGE_BLIND = 1e-2
# fit_scramble's within-prior strengths when prior=None (0: the plain ridge gate).
PRIOR_GRID = (0.0, 1.0, 4.0)
# The gate's tightest quantile (labelled gallery) with one photo: its gate must stand for photos
# it never saw, and its cover estimate is other people's average (it cannot see an atypical
# photo), so it opens wide: about 0.15 % of ordinary faces on LFW + dlib, everyone else's rank-1
# and TAR within 0.15 point (docs/benchmarks.md); wider still (down the grid below) as far as the
# gallery budget allows.
Q_ONE = 0.995
# The quantiles searched, tightest first: with 2+ photos the gate opens as little as it can while
# covering ``cover`` of the person's unseen photos; with one, as wide as it may (from Q_ONE). It
# widens only while it touches at most ``max_touched`` of the gallery's faces: a large gallery's
# budget is spent at its first step (0.9995; Q_FEW, Q_ONE with fewer photos), so erasures in
# sequence stay cheap there; the gates of a gallery of tens of people touch none of its faces down
# to 0.95, and a look-alike in it needs them that wide (LFW + dlib, 15 people, 3 photos: the worst
# person's re-enrolment rank-1 from 44 % to 5 %, docs/benchmarks.md).
Q_GRID = (0.9995, 0.999, 0.998, 0.995, 0.99, 0.98, 0.95)
# Where 2-4 photos start the search (the tightest quantile they may get). Their cover estimate is
# cross-validation over 2-4 photos, which says "all covered" for nearly everyone, so the search
# stopped at the tightest quantile (47 of 60 gates fitted on 3 photos) and a real cover of 65-80
# % left a few people findable at 10-35 %. LFW + dlib, each erased alone: `facekd bench`, 3
# photos, forget rank-1 2.50 -> 1.67 %, TAR@1e-3 0.43 -> 0.31 %; five draws of 12 replayed over
# 200 splits (a perfect erasure: 0.97 %) 2.24 -> 1.76 % (from 0.998: 0.98 %), 2 photos 3.73 ->
# 3.31 %, FaceNet 3 photos 1.65 -> 0.83 %. What it costs: 50 erasures in sequence from 3 photos
# cost everyone else 0.28 -> 0.47 points (with spare.SPARE_FEW; 0.60 without, 0.75 from 0.998),
# FaceNet 0.41 -> 0.38 (seeds 0-2); the 50 erased, after all 50, were found at 1.7 instead of
# 2.3 % (docs/benchmarks.md, "Tenth round").
Q_FEW = 0.999
# The budget (``max_touched``): with 2+ photos 1 face in 5,000, so 50 erasures in sequence stay
# within 0.5 rank-1 point for everyone else. A one-photo gate gets 1 face in 500: in a gallery of
# tens of people 2e-4 is a fraction of a face, so its gate stopped at the first face of anyone and
# left the person's new photos uncovered (LFW + dlib, 40 people, one photo, 5 draws: rank-1 6.3 ->
# 4.5 %, TAR@1e-3 1.1 -> 0.7 %; everyone else's rank-1 / TAR lost 0.07 / 0.05 -> 0.10 / 0.08
# point, at worst 0.18 / 0.20; 1 in 200 gave 1.8 % but cost up to 0.4 / 0.5). On FaceNet it
# gained nothing and cost TAR 0.55 point in one draw of five; one-photo gates in sequence cost a
# lot either way (50 of them, draws 0-1: 8.6 -> 9.1 points; docs/benchmarks.md, "Five draws").
MAX_TOUCHED = 2e-4
MAX_TOUCHED_ONE = 2e-3
# What a one-photo gate trades (fit_scramble's ``q_one``, ``[forget] scramble_q_one``; None: the
# default search): the erased person's fresh re-enrolment rank-1 (%, each erased alone) and the
# rank-1 points everyone else loses after 50 one-photo erasures in sequence, with gates that spare
# the enrolled (facekd.methods.spare). LFW + dlib, five draws (docs/benchmarks.md, "Sparing the
# enrolled", "Ninth round" and "Tenth round", where `facekd bench` re-read the alone figures of
# 0.997-0.999 with sparing: 0.2-0.3 point above the sixth round's). A one-photo gate is a one-shot
# verifier: to cover the person's new photos it must open on a share of everyone else's (0.25 % per
# gate at the default, 0.07 % at 0.998), and those shares add up; sparing lets most of them through
# (before it: 10.4 / 5.9 / 3.5 / 1.7 points; sparing only the mean faces the gate does not open on:
# 2.8 / 1.3 / 0.65 / 0.33). No setting meets issue 21's 5 % and 0.5 point at once; privacy first,
# the default favours the erased.
ONE_PHOTO_FRONTIER = {None: (3.2, 1.6), 0.997: (6.0, 0.9), 0.998: (7.7, 0.65),
                      0.999: (12.8, 0.33)}
# How much a one-photo gate's cover hangs on the photo (benchmarks/bench_one_photo.py, LFW: 3
# single photos of each of the 62 identities with 20+ faces, the default fit): per encoder, the
# share (%) of single photos whose gate opened fully on under 80 % of the person's other photos,
# and the rank correlation of the fit's cover estimate with the real cover. The estimate is other
# people's average (real covers 94.1 / 95.0 % on average, estimated 91.6 / 91.3): it cannot tell a
# poor photo from a good one, and neither could the photo's likeness to its nearest strangers
# (rank correlation -0.29 / 0.04). New photos of the person can (verify --images).
ONE_PHOTO_POOR = {"dlib": (5.4, 0.09), "facenet": (2.7, 0.11)}
# The look-alike guard's measured setting (fit_scramble's ``guard``, ``guard_keep``; off by
# default). On LFW + dlib, 50 erasures in sequence cost everyone else 0.36 rank-1 points on
# average over 5 seeds (worst 0.43) without it, 0.24 with GUARD and GUARD_KEEP (a gate never
# lifted above any of the person's unseen photos), 0.14 with guard_keep 0.97 (bench:guard; with
# the sharper hinge of before WIDTHS: 0.92, 0.66 and 0.37). But the person's unseen gallery
# photos are not their new photos: on the full LFW gallery the keep-all guard let the worst
# person's new photos escape more often (re-enrolment rank-1 over 200 splits: worst 2.8 -> 5.5 %
# with the sharp hinge, 2.8 -> 5.7 % with the soft one, bench:gate-prior), and keep 0.97 left
# one person in a 40-person workspace findable at 17 % instead of 9.5 %. Privacy first: the
# operator opts in where everyone else's accuracy matters more.
GUARD = 0.02
GUARD_KEEP = 1.0
# The hinge's default width (``s1 = t0 + width * (s_cv - t0)``) by how many photos the fit has:
# fewer than FEW_BELOW, fewer than SOFT_FROM, or more. Everyone else's faces that a gate touches sit
# just above t0, the person's unseen photos far above it: a softer hinge moves the former less (a
# face moved a little is still its owner's) and the person's barely. But ``s_cv`` is read off the
# person's unseen photos, a reliable quantile only with many of them. Measured on LFW + dlib
# (docs/benchmarks.md, "The soft hinge"): from 10 photos on, 0.5 instead of 0.15 cut what 50
# erasures in sequence cost everyone else from 0.92 to 0.36 rank-1 points (5 seeds) and left the
# erased within the real-stranger yardstick (re-enrolment rank-1 over 200 splits, full gallery: 1.1
# % at 10 photos either way, 1.1 -> 1.3 % with all); with 5 photos it let one person's new photos be
# found at 7.5 % instead of 2.9 %, so fewer photos keep a sharp hinge. Since gates spare the
# enrolled (facekd.methods.spare) the look-alikes a sharp hinge would move are mostly let through,
# and 2-4 photos went from 0.15 to one photo's 0.05 (docs/benchmarks.md, "Ninth round"): each erased
# alone (five draws of 12, re-enrolment rank-1 over 200 splits), fitted on 2 / 3 photos 5.0 / 2.8 ->
# 3.7 / 2.2 % (dlib), on 3 photos 2.0 -> 1.7 % (FaceNet); 50 in sequence from 3 photos cost everyone
# else 0.24 -> 0.28 points (dlib) and 0.43 -> 0.48 (FaceNet, seeds 0-1). From 5 photos on it gained
# little (dlib, 5 photos: 1.4 -> 1.3 %) and cost the tiny encoder, whose identities overlap, 6
# points after 1,000 erasures fitted on 8 photos each (everyone else's rank-1 67.0 -> 60.8 %), so
# 5-9 photos keep 0.15. Sharper still (0.02) reached 2.0 % but cost FaceNet 0.52. With many photos,
# 0.3 instead of 0.5 found the erased less often (`facekd bench`, dlib, all photos, five draws: 1.00
# instead of 1.33 %, where a perfect erasure reads 0.97 %) but 50 in sequence cost everyone else
# 0.24 instead of 0.13 rank-1 points and 0.41 instead of 0.12 TAR points, 1.49 in one seed of five
# (FaceNet: 0.34 instead of 0.21 rank-1); the erased were already as hard to find as after a perfect
# erasure, so 0.5 stays (docs/benchmarks.md, "Tenth round").
WIDTHS = {"few": 0.05, "some": 0.15, "many": 0.5}
FEW_BELOW = 5
SOFT_FROM = 10


# The quantile of enrolled strangers' cosines to the spared mean faces above which a face is
# spared (0: sparing off). LFW + dlib, 50 erasures in sequence, five seeds: everyone else lost
# 1.6 / 0.28 / 0.13 rank-1 points with 1 / 3 / all photos against 10.4 / 0.88 / 0.27 without,
# and the erased were found about as often (docs/benchmarks.md, "Sparing the enrolled" and
# "Ninth round"; 2.8 with one photo while the mean faces a gate opens on were left out).
SPARE = 0.99
# With 2-4 photos (their search starts wider, at Q_FEW): 0.9. Their wider gates
# open on more look-alikes, and the person's own photos, more than one, hold the margin: 50
# erasures from 3 photos cost everyone else 0.47 instead of 0.60 points (LFW + dlib, five seeds)
# and left the erased alone as findable (1.76 % either way). With one photo 0.9 saved 0.3 point
# but let the 50 erased be found after all 50 at 4.1 instead of 3.3 %, so one photo keeps 0.99.
SPARE_FEW = 0.9

# Where 2-4 photos' search ignores its cover estimate and widens as far as the gallery budget
# allows, as one photo's does: a gallery of at most WALK_PEOPLE people. Their cross-validated
# cover says "all covered" (3 photos scored by gates fitted on the others) and the search stopped
# at Q_FEW, while a gallery of tens of people touches none of its faces far wider and a look-alike
# in it needs that width.
# LFW + dlib, each erased alone (`facekd bench`, five draws of 12; docs/benchmarks.md, "Eleventh
# round"): 3 photos, 40 people 2.50 -> 1.67 %, 15 people 4.00 -> 1.67 % (over 2x chance 13.3 -> 6.7
# and 8.3 -> 1.7 % of them; a perfect erasure leaves 33 and 20 % over), everyone else unchanged;
# 40 LFW people enrolled with 3 photos each, one erased from 3: the outside replay found them at
# 33 %, now 3 %. At 100 people 2.83 -> 2.17 %, and 50 erasures in sequence from 100 people cost
# everyone else 0.45 rank-1 points (0.42 with the walk from 64 people down). On the full gallery
# (158 people) it helped alone too (1.67 -> 1.50 %), but 50 erasures in sequence cost everyone
# else 0.60 instead of 0.47 points (2 photos: 0.58 instead of 0.41), so a larger gallery keeps the
# estimate's stop.
WALK_PEOPLE = 100


def walks_the_budget(n: int, people: int) -> bool:
    """Whether the gate search for ``n`` photos ignores its cover estimate and widens as far as
    the gallery budget allows: one photo always (its estimate is other people's average), 2 to
    ``FEW_BELOW - 1`` photos in a gallery of at most ``WALK_PEOPLE`` people."""
    return n < 2 or (n < FEW_BELOW and people <= WALK_PEOPLE)


def q_ladder(n: int) -> tuple[float, ...]:
    """The quantiles a labelled gallery's gate search walks for ``n`` photos, tightest first:
    ``Q_GRID`` from ``Q_ONE`` with one photo, from ``Q_FEW`` with 2 to ``FEW_BELOW - 1``, all
    of it with more."""
    start = Q_ONE if n < 2 else Q_FEW if n < FEW_BELOW else Q_GRID[0]
    return tuple(x for x in Q_GRID if x <= start)


def hinge_width(n: int, soft_from: int = SOFT_FROM) -> float:
    """The default hinge width for a gate fitted on ``n`` photos of the person (``WIDTHS``):
    sharp below ``FEW_BELOW`` photos, soft from ``soft_from`` photos on (0: never)."""
    if soft_from and n >= soft_from:
        return WIDTHS["many"]
    return WIDTHS["few" if n < FEW_BELOW else "some"]


def ridge_grid(n: int, blind: bool = False) -> tuple[float, ...]:
    """The ridges a gate fitted on ``n`` photos chooses from: ``RIDGE_GRID``, ``RIDGE_GRID_ONE``
    with one photo, only ``RIDGE_BLIND`` where nobody has two photos (``blind``)."""
    return (RIDGE_BLIND,) if blind else RIDGE_GRID_ONE if n < 2 else RIDGE_GRID


def budget(n: int) -> float:
    """The most of the gallery's faces a widening gate on ``n`` photos may touch
    (``max_touched``): ``MAX_TOUCHED_ONE`` with one photo, else ``MAX_TOUCHED``."""
    return MAX_TOUCHED_ONE if n < 2 else MAX_TOUCHED


def spare_quantile(n: int) -> float:
    """The quantile from which a gate on ``n`` photos spares the enrolled: ``SPARE_FEW`` with 2
    to ``FEW_BELOW - 1`` photos, else ``SPARE``."""
    return SPARE_FEW if 2 <= n < FEW_BELOW else SPARE
