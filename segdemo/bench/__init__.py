"""`segdemo bench`: what segdemo costs against the transformers pipeline, and what a user of the web app waits for.

Modules: `engine` runs the engine benchmark (each contender in its own `worker` process, class maps compared with
the transformers pipeline's), `jobs` is the parent↔worker contract, `report` renders results (tables, docs section,
chart), `images` makes the uploaded images, `facts` describes the machine; `app`, `app_browser` and `app_report` are
`bench --app` (API round trip and browser paint beside a do-nothing Gradio app); `load` is `bench --load`, `tier` its
engine tier's client and Triton's account of a run. The command line is
`segdemo.commands.bench`; nothing in the library imports this package.
"""
