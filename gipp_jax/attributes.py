"""The attribute groups of a primitive, as data: one table that the codec's rooms walk.

A primitive's codes are one row of integers, its groups side by side: the position (x, y),
the covariance's log-diagonal (a, c) and off-diagonal (b, or its correlation), the color
(r, g, b) and, for a primitive with a carrier, the carrier (kx, ky, phi). Each room asks the
table what it needs of a group rather than naming the groups itself:

* :mod:`gipp_jax.quantize` and :mod:`gipp_jax.codec`: which groups have a learned quantizer
  (trained in QAT, its scale and offset in the file's header), at which of the bit depths
  ``(position, covariance, color)``, on how many channels, in which domain;
* :mod:`gipp_jax.bitstream`: each column's largest code at a file's depths;
* :mod:`gipp_jax.refine`: which columns the code search moves one level up and down (a
  color is solved for instead), which wrap around, and which only a flagged primitive has.

A carrier is one entry, optional (a file's flag per primitive says who carries one), on a
fixed grid rather than a learned quantizer; a file without carriers has the first four
groups only, and every room reads the same with or without it.
"""

from __future__ import annotations

import dataclasses

# The bit depths a file records, in its header's (and ``--bits``') order.
DEPTHS = ("position", "covariance", "color")


@dataclasses.dataclass(frozen=True)
class AttributeGroup:
    """One group of a primitive's codes (see the module docstring)."""

    name: str                  # its field of quantize.GaussianQuantizers: its quantizer, or grid
    columns: tuple[int, ...]   # its columns in a primitive's row of codes
    depth: str | None          # which of DEPTHS its codes take; None: a grid of its own (carriers)
    domain: str = "linear"     # a learned quantizer's: "linear", "log" or "correlation" (arcsine or not)
    moved: bool = True         # the code search tries each of its codes one level up and down
    wrapping: tuple[int, ...] = ()  # its columns whose codes wrap around (a phase)
    optional: bool = False     # only primitives whose flag is set carry it

    def __post_init__(self):
        if list(self.columns) != list(range(self.columns[0], self.columns[0] + len(self.columns))):
            raise ValueError(f"group {self.name}: its columns must be consecutive")

    @property
    def span(self) -> slice:
        """Its columns as a slice of a row of codes."""
        return slice(self.columns[0], self.columns[-1] + 1)

    @property
    def learned(self) -> bool:
        """An LSQ+ quantizer, trained in QAT and stored in the header (else a fixed grid)."""
        return self.depth is not None

    @property
    def channels(self) -> int:
        return len(self.columns)


POSITION = AttributeGroup("position", (0, 1), "position")
COVARIANCE_DIAGONAL = AttributeGroup("cov_diag", (2, 3), "covariance", domain="log")
COVARIANCE_OFF_DIAGONAL = AttributeGroup("cov_off", (4,), "covariance", domain="correlation")
# The image is linear in a color: the code search solves for it (least squares, rounded).
COLOR = AttributeGroup("color", (5, 6, 7), "color", moved=False)
CARRIER = AttributeGroup("carriers", (8, 9, 10), None, wrapping=(10,), optional=True)

GAUSSIAN_GROUPS = (POSITION, COVARIANCE_DIAGONAL, COVARIANCE_OFF_DIAGONAL, COLOR)
ATTRIBUTE_GROUPS = GAUSSIAN_GROUPS + (CARRIER,)
LEARNED_GROUPS = tuple(g for g in ATTRIBUTE_GROUPS if g.learned)
GAUSSIAN_COLUMNS = sum(g.channels for g in GAUSSIAN_GROUPS)  # 8: a file's codes without carriers


def groups(carriers: bool) -> tuple[AttributeGroup, ...]:
    """The groups of a file's rows: with ``carriers``, the optional carrier's too."""
    return ATTRIBUTE_GROUPS if carriers else GAUSSIAN_GROUPS


def depth_of(group: AttributeGroup, bits) -> int:
    """A learned group's depth among a file's ``bits`` ``(position, covariance, color)``
    (a tuple, or a dict keyed by :data:`DEPTHS`)."""
    return bits[group.depth] if isinstance(bits, dict) else bits[DEPTHS.index(group.depth)]
