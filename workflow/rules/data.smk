# Manifest validation: every manifest the pipeline reads is checked line by line (fields, audio,
# segments, durations, ids) before anything trains on it or is scored against it.


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
    params:
        options=validate_options,
    shell:
        "python -m stages.validate --input {input} --output {output.manifest}"
        " --report {output.report} {params.options}"
        " --workers {threads} 2> {log}"
