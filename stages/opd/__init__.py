"""On-policy distillation: student rollout, teacher scoring, the teacher↔student vocabulary map
(``vocab``) and the union top-k KL loss (``loss``)."""
