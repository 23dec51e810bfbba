"""Options of the automatic 2D class selection job (RELION Select job.star names, ``RelionJob::initialiseSelectJob``).

RELION's names, labels and defaults where RELION has the option (``fn_model``,
``do_class_ranker``, ``rank_threshold``, ``select_nr_parts``, ``select_nr_classes``,
``do_regroup``, ``nr_groups``, ...); ours for what RELION lacks: a maximum score, a
weights file for the score, and value-based rules (class numbers, minimum class
distribution or particle count, maximum estimated resolution). Value rules combine with
the score rule by AND; explicit class numbers replace both. RELION's other Select modes
(micrographs, metadata values, splitting, duplicates, filaments) are accepted in job.star
for round trips but must stay off.

Example::

    opts = SelectOptions(fn_model="Class2D/job013/run_it100_optimiser.star",
                         do_class_ranker=True, rank_threshold=0.4, select_nr_parts=5000)
    opts.to_job_star()["rank_threshold"]      # '0.4'
"""
from __future__ import annotations

from pydantic import model_validator

from emclass2d.jobtypes.base import JobOptions, option
from emclass2d.nodes.graph.labels import NODE_CLASS2D_OPTIMISER

#: Default approximate number of groups when regrouping (RELION's GUI default of 1 is a slip).
DEFAULT_NR_GROUPS = 20


class SelectOptions(JobOptions):
    """Automatic (score- or value-based) selection of 2D classes and their particles."""

    # --- I/O
    fn_model: str = option("", relion="fn_model", label="Select classes from job:", node_type=NODE_CLASS2D_OPTIMISER,
                           help="run_itNNN_optimiser.star of a Class2D job (ours or RELION's)")
    fn_mic: str = option("", relion="fn_mic", label="OR select from micrographs.star:", help="not supported; leave empty")
    fn_data: str = option("", relion="fn_data", label="OR select from particles.star:", help="not supported; leave empty")
    # --- Class options (RELION)
    do_class_ranker: bool = option(True, relion="do_class_ranker", label="Automatically select 2D classes?",
                                   help="select classes by their predicted score")
    rank_threshold: float = option(0.5, relion="rank_threshold", label="Minimum threshold for auto-selection:",
                                   ge=0.0, le=1.0, suggested=(0.0, 1.0))
    select_nr_parts: int = option(-1, relion="select_nr_parts", label="Select at least this many particles:",
                                  help="top up with the best-scoring rejected classes; -1: off")
    select_nr_classes: int = option(-1, relion="select_nr_classes", label="OR: select at least this many classes:",
                                    help="top up with the best-scoring rejected classes; -1: off")
    do_recenter: bool = option(False, relion="do_recenter", label="Re-center the class averages?",
                               help="not supported with automatic selection (as RELION)")
    do_regroup: bool = option(False, relion="do_regroup", label="Regroup the particles?")
    nr_groups: int = option(DEFAULT_NR_GROUPS, relion="nr_groups", label="Approximate nr of groups:", ge=1,
                            suggested=(1, 200), help="scale groups of similar intensity, at least 10 particles each")
    # --- RELION's other Select modes (round trips only; must stay off)
    do_select_values: bool = option(False, relion="do_select_values", label="Select based on metadata values?")
    select_label: str = option("rlnCtfMaxResolution", relion="select_label", label="Metadata label for subset selection:")
    select_minval: float = option(-9999.0, relion="select_minval", label="Minimum metadata value:")
    select_maxval: float = option(9999.0, relion="select_maxval", label="Maximum metadata value:")
    do_discard: bool = option(False, relion="do_discard", label="OR: select on image statistics?")
    discard_label: str = option("rlnImageName", relion="discard_label", label="Metadata label for images:")
    discard_sigma: float = option(4.0, relion="discard_sigma", label="Sigma-value for discarding images:")
    do_split: bool = option(False, relion="do_split", label="OR: split into subsets?")
    do_random: bool = option(False, relion="do_random", label="Randomise order before making subsets?:")
    split_size: int = option(100, relion="split_size", label="Subset size:")
    nr_split: int = option(-1, relion="nr_split", label="OR: number of subsets:")
    do_remove_duplicates: bool = option(False, relion="do_remove_duplicates", label="OR: remove duplicates?")
    duplicate_threshold: float = option(30.0, relion="duplicate_threshold", label="Minimum inter-particle distance (A)", units="Å")
    image_angpix: float = option(-1.0, relion="image_angpix", label="Pixel size before extraction (A)", units="Å")
    do_filaments: bool = option(False, relion="do_filaments", label="OR: select filaments by dendrogram?")
    dendrogram_threshold: float = option(0.85, relion="dendrogram_threshold", label="Dendrogram threshold:")
    dendrogram_minclass: float = option(-1000.0, relion="dendrogram_minclass", label="Minimum class size:")
    # --- ours
    max_score: float = option(1.0, relion="max_score", label="Maximum score for auto-selection:", ge=0.0, le=1.0,
                              help="classes scoring above this are rejected (e.g. to isolate doubtful classes)")
    fn_weights: str = option("", relion="fn_weights", label="Class score weights file:",
                             help="a .npz written by emclass2d.tools.train_ranker; empty: the shipped weights")
    select_classes: str = option("", relion="select_classes", label="OR: select these class numbers:",
                                 help='e.g. "1,3,5-8"; replaces the score and value rules')
    min_class_distribution: float = option(-1.0, relion="min_class_distribution",
                                           label="Minimum class distribution:", le=1.0, help="fraction 0-1; -1: off")
    min_class_particles: int = option(-1, relion="min_class_particles", label="Minimum particles per class:",
                                      help="-1: off")
    max_resolution: float = option(-1.0, relion="max_resolution", label="Maximum estimated resolution (A):",
                                   units="Å", help="keep classes at least this well resolved; -1: off")
    # --- Running (RELION)
    do_queue: bool = option(False, relion="do_queue", label="Submit to queue?")
    queuename: str = option("openmpi", relion="queuename", label="Queue name:")
    qsub: str = option("qsub", relion="qsub", label="Queue submit command:")
    qsubscript: str = option("", relion="qsubscript", label="Standard submission script:")
    min_dedicated: int = option(1, relion="min_dedicated", label="Minimum dedicated cores per node:")
    other_args: str = option("", relion="other_args", label="Additional arguments:", help="ignored")

    @model_validator(mode="after")
    def _check_modes(self) -> "SelectOptions":
        others = [name for name in ("do_select_values", "do_discard", "do_split", "do_remove_duplicates", "do_filaments")
                  if getattr(self, name)]
        if others or self.fn_mic or self.fn_data:
            off = ", ".join(others + [n for n in ("fn_mic", "fn_data") if getattr(self, n)])
            raise ValueError(f"{off}: not provided by this job type; select 2D classes from fn_model")
        if self.do_class_ranker and self.do_recenter:
            raise ValueError("do_recenter: re-centring is not available with automatic selection (do_class_ranker Yes)")
        if self.max_score < self.rank_threshold:
            raise ValueError(f"max_score ({self.max_score}) is below rank_threshold ({self.rank_threshold})")
        if not self.do_class_ranker and not self.uses_value_rules:
            raise ValueError("nothing to select on: set do_class_ranker Yes, or select_classes, "
                             "min_class_distribution, min_class_particles or max_resolution")
        return self

    @property
    def uses_value_rules(self) -> bool:
        """Whether any value-based rule (or explicit class numbers) is set."""
        return bool(self.select_classes.strip()) or self.min_class_distribution > 0 or \
            self.min_class_particles > 0 or self.max_resolution > 0
