"""The HTTP layer both Waldo services share (the inference service and the jobs API): the error
contract (`errors`), bearer-token checks (`auth`), body-size middleware (`middleware`) and the
uvicorn server with its connection guard (`server`). Needs only fastapi, starlette and uvicorn."""
