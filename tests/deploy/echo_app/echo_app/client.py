"""ClientApp: answers each query with the site's node config (reads nothing else)."""

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def echo(message: Message, context: Context) -> Message:
    """Reply with the round number and the site-config path of this SuperNode."""
    rnd = int(message.content["config"]["round"])
    site = str(context.node_config.get("site-config", ""))
    reply = ConfigRecord({"round": rnd, "site-config": site})
    return Message(RecordDict({"echo": reply}), reply_to=message)
