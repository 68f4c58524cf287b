"""From a micro-batch to committed rows and archived files: plan (pure), infer, persist, archive."""
