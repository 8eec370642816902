"""The suite's own helpers, where a flaw in them fails other tests at random."""

from conftest import free_port


def test_free_port_never_hands_out_a_port_twice():
    # CI at f8ca110: a broker got the same port for --http and --cluster and refused to
    # start. The kernel gives a just-released port out again (about 10 repeats in 500 calls
    # here), so free_port() must remember what it handed out.
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
