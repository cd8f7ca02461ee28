# emolens: where and how language models represent emotion, and whether it is the same across models.
# Table of contents: config and its validation, one rule file per phase, the final targets.
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from emolens.config import ConfigError, check_labels, coerce_overrides, first_error, replace_labels

min_version("9.0")


COMMAND_LINE = workflow.config_settings.config  # --config key=value: nested values arrive as strings
coerce_overrides(config, COMMAND_LINE)
replace_labels(config, workflow.configfiles, COMMAND_LINE)  # the emotions are a set: the last layer's, whole
CONFIG_SOURCE = " + ".join(map(str, workflow.configfiles))
try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError:  # Snakemake prints the whole schema around the message: say it in one line
    raise WorkflowError(first_error(config, CONFIG_SOURCE, COMMAND_LINE)) from None
try:
    check_labels(config, CONFIG_SOURCE, COMMAND_LINE)  # what the schema cannot say: each emotion its own word
except ConfigError as e:
    raise WorkflowError(str(e)) from None


include: "workflow/rules/common.smk"
include: "workflow/rules/preflight.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/organisms.smk"
include: "workflow/rules/equivalence.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/vectors.smk"
include: "workflow/rules/alignment.smk"
include: "workflow/rules/patching.smk"
include: "workflow/rules/heads.smk"
include: "workflow/rules/sublayers.smk"
include: "workflow/rules/steering.smk"
include: "workflow/rules/statistics.smk"
include: "workflow/rules/verify.smk"
include: "workflow/rules/findings.smk"


rule all:
    input:
        all_targets(),
    default_target: True
