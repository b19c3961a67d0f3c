"""dynaprune's library: trajectories of recurrent weights, LDS fits, dynamics distances, unit selection,
structured pruning and fine-tuning. Never imports Streamlit; the dashboard in app/ calls into it."""
