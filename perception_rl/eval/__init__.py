"""Evaluation: decode a split with a policy, score it with the task's metrics, write the
predictions and the report (`runner`), the papers' protocols (`protocol`), paired intervals
(`paired`) and pass@k headroom (`headroom`). The metrics themselves are `perception_rl.metrics`."""
