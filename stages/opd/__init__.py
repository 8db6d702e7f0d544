"""On-policy distillation: the step's settings (``config``), student rollout (``rollout``),
teacher language (``language``), the teacher↔student vocabulary map (``vocab``), the union
top-k KL loss (``loss``), the step itself (``step``) and calibration (``calibration``)."""
