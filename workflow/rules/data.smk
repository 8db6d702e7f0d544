# Manifest validation: every manifest the pipeline reads is checked line by line (fields, audio,
# segments, durations, ids) before anything trains on it or is scored against it. A manifest
# given as a corpus source is prepared from the corpus first.


rule validate:
    input:
        raw_manifest,
    output:
        manifest=f"{OUT}/data/{{name}}.jsonl",
        report=f"{OUT}/data/{{name}}.report.json",
        summary=f"{OUT}/data/{{name}}.report.md",
    log:
        f"{OUT}/logs/validate/{{name}}.log",
    conda:
        ENV
    threads: config["validate"]["workers"]
    resources:
        **job_resources("validate"),
    params:
        options=validate_options,
        python=interpreter,
        code=code_version("stages.validate"),
    shell:
        LOG
        + "{params.python} -m stages.validate --input {input} --output {output.manifest}"
        " --report {output.report} {params.options}"
        " --workers {threads}"


# A manifest given in the config as a corpus source ({format: librispeech, path: ...,
# subset: test-clean}) is prepared from the corpus' own layout first; validation then checks it
# like any other.
rule prepare:
    input:
        prepare_input,
    output:
        manifest=f"{OUT}/prepared/{{name}}.jsonl",
        report=f"{OUT}/prepared/{{name}}.report.json",
        summary=f"{OUT}/prepared/{{name}}.report.md",
    log:
        f"{OUT}/logs/prepare/{{name}}.log",
    conda:
        ENV
    resources:
        **job_resources("prepare"),
    params:
        source=prepare_path,
        options=prepare_options,
        python=interpreter,
        code=code_version("stages.prepare"),
    shell:
        LOG + "{params.python} -m stages.prepare --source {params.source:q}"
        " --output {output.manifest} --report {output.report} {params.options}"
