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


# `polldnodes(NAME)` is the changesets whose full hashes are listed under NAME in the
# JSON file that `--config polld.nodes=PATH` names: how polld hands hg thousands of
# hashes, which would not fit in one command-line argument as `id(...) or id(...)`.
# Hashes the repository does not have are left out, as `id()` leaves them out.
revsetpredicate = registrar.revsetpredicate()


@revsetpredicate(b'polldnodes(NAME)', safe=True)
def polld_nodes(repo, subset, x):
    import json

    from mercurial import revsetlang, smartset
    from mercurial.node import bin

    name = revsetlang.getstring(x, b'polldnodes needs a name').decode('ascii')
    path = repo.ui.config(b'polld', b'nodes')
    with open(path, 'rb') as lists:
        hashes = json.load(lists).get(name, [])
    index = repo.changelog.index
    revs = set()
    for node in hashes:
        rev = index.get_rev(bin(node.encode('ascii')))
        if rev is not None:
            revs.add(rev)
    return subset & smartset.baseset(sorted(revs))


# `{desc|polldcut}`: a description cut to polld's 64 KiB, saying its full size, so a
# 20 MB message never reaches polld whole.
templatefilter = registrar.templatefilter()

POLLD_MAX_MESSAGE = 64 * 1024


@templatefilter(b'polldcut', intype=bytes)
def polld_cut(text):
    if len(text) <= POLLD_MAX_MESSAGE:
        return text
    cut = text[:POLLD_MAX_MESSAGE]
    # At a character boundary: drop a trailing partial UTF-8 sequence.
    cut = cut.decode('utf-8', 'ignore').encode('utf-8')
    return b'%s\n\n[polld: message cut at %d of %d bytes]' % (
        cut.rstrip(),
        POLLD_MAX_MESSAGE,
        len(text),
    )
