# polld's only Mercurial extension, loaded from polld's private hgrc and nowhere else.
#
# `hg polld-heads -- SOURCE` asks any peer (a local path, file://, ssh://) for its
# branch heads and bookmarks, the two wire-protocol calls polld makes itself over
# http(s), and prints their answers in the same format as the http wire protocol:
#
#   <percent-encoded branch> <hex node> [<hex node> ...]\n   (one line per branch)
#   \0
#   <bookmark>\t<hex node>\n                                  (one line per bookmark)
#
# so that one parser reads both. It reads nothing else and writes nothing; the peer is
# filtered as a server would filter it ("served": no hidden, no secret changesets).
from mercurial import hg, registrar, util
from mercurial.node import hex

cmdtable = {}
command = registrar.command(cmdtable)


@command(b'polld-heads', [], b'SOURCE', norepo=True)
def polld_heads(ui, source):
    peer = hg.peer(ui, {}, source)
    try:
        with peer.commandexecutor() as executor:
            branchmap = executor.callcommand(b'branchmap', {})
            bookmarks = executor.callcommand(
                b'listkeys', {b'namespace': b'bookmarks'}
            )
        branchmap = branchmap.result()
        bookmarks = bookmarks.result()
    finally:
        peer.close()
    for branch, nodes in sorted(branchmap.items()):
        ui.write(
            b'%s %s\n'
            % (util.urlreq.quote(branch), b' '.join(hex(n) for n in nodes))
        )
    ui.write(b'\0')
    for name, node in sorted(bookmarks.items()):
        ui.write(b'%s\t%s\n' % (name, node))
