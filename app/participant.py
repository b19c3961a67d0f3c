"""Who sits at this browser, for a room of participants sharing one dashboard: a name, asked once
(on the Fine-tune page), that labels the jobs one starts and picks one's own jobs from everyone's.

    name = participant.current()      # None until given
    participant.ask()                 # the prompt, drawn where a page wants it

Where the name is kept: in this session, and in the page's address as ?name=... A reload keeps the
address, so the name survives it (and a facilitator can hand out links with names in them). A
cookie would also survive moving between pages, but Streamlit only reads cookies
(st.context.cookies): setting one takes JavaScript run in the page. Moving to another page through
the sidebar drops the query string; every call of current() puts the name back, and so does
keep_in_address(), which the router may call on every page.

A name is a label, not a login: anyone may type any name. It is checked like every job owner's
(analysis.jobs.validate_owner: short; letters, digits and a little punctuation, so no path
separator or markup) before it is used or stored.
"""
from __future__ import annotations

import streamlit as st

from analysis import jobs
from analysis.errors import DynapruneError

SESSION_KEY = "participant"
URL_PARAM = "name"
INPUT_KEY = "participant_input"
ERROR_KEY = "participant_error"


def remember(name: str) -> None:
    st.session_state[SESSION_KEY] = name
    if st.query_params.get(URL_PARAM) != name:
        st.query_params[URL_PARAM] = name


def keep_in_address() -> None:
    """Put this session's name back into the address after the sidebar dropped it: for the router to
    call on every page, so a reload anywhere keeps the name (only checked names are in the session)."""
    name = st.session_state.get(SESSION_KEY)
    if name and st.query_params.get(URL_PARAM) != name:
        st.query_params[URL_PARAM] = name


def forget() -> None:
    st.session_state.pop(SESSION_KEY, None)
    st.query_params.pop(URL_PARAM, None)


def current() -> str | None:
    """This session's name, else the address's, else None; an unusable name in the address is dropped
    with a warning saying why."""
    name = st.session_state.get(SESSION_KEY) or st.query_params.get(URL_PARAM)
    if name is None:
        return None
    try:
        name = jobs.validate_owner(name)
    except DynapruneError as error:
        forget()
        st.warning(f"The name in the page's address was not used: {error}.")
        return None
    remember(name)
    return name


def _use_typed_name() -> None:
    try:
        remember(jobs.validate_owner(st.session_state.get(INPUT_KEY, "")))
    except DynapruneError as error:
        st.session_state[ERROR_KEY] = str(error)


def ask() -> str | None:
    """The participant's name, asking for it when there is none yet: a prompt until it is given, then
    the name with a button to change it. Returns the name, or None while it is not given."""
    name = current()
    if name is not None:
        left, right = st.columns([4, 1])
        left.caption(f"Participant: **{name}**. The jobs you start carry this name.")
        right.button("Change name", key="participant_change", on_click=forget)
        return name
    st.info("A room shares this dashboard: give your name once, and the jobs you start carry it. The jobs list "
            "then shows yours (a toggle shows everyone's). The name is kept in this page's address, so a reload "
            "keeps it.")
    # not a form: the page's only form is the job's
    st.text_input("Your name", key=INPUT_KEY, max_chars=jobs.MAX_OWNER_CHARS, placeholder="e.g. Ada")
    st.button("Use this name", key="participant_use", on_click=_use_typed_name)
    problem = st.session_state.pop(ERROR_KEY, None)
    if problem:
        st.error(f"That name cannot be used: {problem}.")
    return None
