"""The steps of the method as the Learn page ("The method") presents them, the pages where each can
be tried, and the terms each step defines. Other pages take their help texts for those terms from
here, so that every term is defined once and points to the step that explains it."""
from __future__ import annotations

from dataclasses import dataclass

STEP_PARAM = "step"  # the URL's query parameter naming the Learn page's step, e.g. ?step=distance


@dataclass(frozen=True)
class Step:
    slug: str  # its name in the URL
    label: str  # short, for the step selector
    title: str
    try_on: tuple[tuple[str, str], ...]  # (page file, what to do there) where the step can be tried


@dataclass(frozen=True)
class Term:
    name: str
    step: str  # slug of the step that defines it
    meaning: str


STEPS = (
    Step("log", "1 Log", "Log the weights while training",
         (("views/trajectories.py", "Trajectories: watch the weights move"),)),
    Step("signal", "2 Signals", "One signal per hidden unit",
         (("views/trajectories.py", "Trajectories: follow any unit's path"),)),
    Step("lds", "3 LDS", "Fit a linear dynamical system to each unit",
         (("views/dynamics.py", "Dynamics: change the LDS order, see the fit"),)),
    Step("distance", "4 Distance", "Measure how alike two units' dynamics are",
         (("views/dynamics.py", "Dynamics: change the horizon m, see the distances"),)),
    Step("cluster", "5 Cluster", "Cluster, and keep one unit per cluster",
         (("views/prune.py", "Prune: move the ratio, see which units go"),)),
    Step("cut", "6 Cut", "Cut the network",
         (("views/prune.py", "Prune: the sizes and the zero-shot perplexity"),)),
    Step("da-l2", "7 DA-L2", "Fine-tune with a discrimination-aware L2 penalty",
         (("views/finetune.py", "Fine-tune: set the penalty, start a job"),)),
    Step("stages", "8 Stages", "Prune in stages, the bigger model teaching the smaller",
         (("views/finetune.py", "Fine-tune: choose the stages, α and τ"),
          ("views/compare.py", "Compare: the stages and runs side by side"))),
)
STEP_NUMBER = {step.slug: number for number, step in enumerate(STEPS, start=1)}

TERMS = {
    "T": Term("T", "log", "The number of snapshots in the trajectory: how many times the weights were logged "
                          "during training (at least 3)."),
    "order": Term("LDS order n", "lds", "The size of each unit's state x(t): the fit keeps the n main directions "
                                        "of the unit's path (at most T - 1)."),
    "explained_variance": Term("explained variance", "lds", "The share of a unit's movement that its n kept "
                                                            "directions hold: 1 means none is lost."),
    "one_step_r2": Term("one-step R²", "lds", "How well A predicts each next point of a unit's path from the "
                                              "current one: 1 is exact, 0 no better than the path's mean."),
    "spectral_radius": Term("ρ(A)", "lds", "The spectral radius of A, its largest eigenvalue in absolute value. "
                                           "Below 1 the fitted state fades; at 1 or above it does not, as happens "
                                           "when training still drifts."),
    "horizon": Term("horizon m", "distance", "How many steps ahead two units' dynamics are compared: the first m "
                                             "powers of A enter the distance. The default, m = T, compares them "
                                             "over as many steps as were logged."),
    "martin": Term("Martin distance", "distance", "The distance with an infinite horizon m = ∞ (De Cock and De "
                                                  "Moor, 2002); units with ρ(A) ≥ 1 are first scaled to 0.99 so "
                                                  "that the sum converges."),
    "average_linkage": Term("average linkage", "cluster", "Clustering that repeatedly merges the two groups of "
                                                          "units with the smallest mean distance between their "
                                                          "members, until the wanted number of clusters is left."),
    "mds": Term("MDS", "cluster", "Multidimensional scaling: places the units in a plane so that their distances "
                                  "there follow the dynamics distances; only distances mean anything, not the "
                                  "axes."),
    "zero_shot": Term("zero-shot perplexity", "cut", "The pruned model's perplexity right after the cut, before "
                                                     "any fine-tuning."),
    "oracle": Term("oracle perplexity", "cut", "On the synthetic language: the perplexity of the true hidden "
                                               "Markov model that generated it, which no model beats on average."),
    "da_l2": Term("DA-L2", "da-l2", "Discrimination-aware L2: a weight penalty during fine-tuning that shrinks "
                                    "unit k by the factor (1 - s_k)^γ, so units that matter little to the loss "
                                    "shrink most."),
    "teacher": Term("teacher", "stages", "The previous stage's best model (at the first stage, the original "
                                         "one); the newly pruned model, the student, learns to match its outputs."),
    "alpha": Term("α", "stages", "The distillation weight: the share of the loss spent matching the teacher's "
                                 "outputs instead of the true next words (default 0.5)."),
    "tau": Term("τ", "stages", "The distillation temperature: both models' scores are divided by τ before they "
                               "are compared, so a larger τ passes on more of the teacher's view of unlikely "
                               "words (default 2)."),
}


def step_of(slug: str) -> Step:
    return STEPS[STEP_NUMBER[slug] - 1]


def terms_of(slug: str) -> list[Term]:
    """The terms the step `slug` defines, in the glossary's order."""
    return [term for term in TERMS.values() if term.step == slug]


def help_text(key: str) -> str:
    """A term's meaning and where the method explains it, for a widget's `help=`."""
    term = TERMS[key]
    return f"{term.meaning} Explained in The method, step {STEP_NUMBER[term.step]}."
