"""The app's screens, each a Streamlit script run by ``st.navigation`` from ``main.py``.

(Not ``pages/``: Streamlit would take a folder of that name for an old-style multipage app.)
"""
