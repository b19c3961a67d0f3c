"""The dynaprune dashboard: a Streamlit app (app/main.py) whose pages live in app/views/."""
