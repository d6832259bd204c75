"""NMEA decoder against what real receivers do, and differentially against pynmeagps."""

from __future__ import annotations

import itertools
import random

import pytest
from pynmeagps import NMEAReader

from drivers.nmea.protocol import NmeaProtocol, checksum, sentence
from drivers.nmea.simulator import epoch_bytes, expected_values, fixes

START = 1_790_000_000.0
# The classic reference sentences (gpsinformation.org NMEA pages), checksums as published.
GGA_REF = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
RMC_REF = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"


def decode(data: bytes) -> tuple[list[dict[str, object]], NmeaProtocol]:
    p = NmeaProtocol()
    return p.feed(data) + p.flush(), p


def test_reference_sentences() -> None:
    out, p = decode(RMC_REF + GGA_REF)
    assert out == [{
        "latitude": 48.1173, "longitude": 11.516666667, "altitude": 545.4,
        "speed": round(22.4 * 1852 / 3600, 4), "course": 84.4, "satellites": 8, "hdop": 0.9,
        "gnss_time": "1994-03-23T12:35:19Z", "fix": "gps",
    }]
    assert not p.errors


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "BD", "GB"])
def test_talkers(talker: str) -> None:
    f = next(fixes(start=START))
    out, p = decode(epoch_bytes(f, talker))
    assert out == [expected_values(f)]
    assert p.frames == 4 and not p.errors


def test_void_fix_and_empty_fields() -> None:
    data = (sentence("GNRMC,,V,,,,,,,,,,N,V") + sentence("GNVTG,,,,,,,,,N")
            + sentence("GNGGA,,,,,,0,00,99.99,,,,,,") + sentence("GNGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99,1")
            + sentence("GNGLL,,,,,,V,N"))
    out, p = decode(data)
    assert out == [{"satellites": 0, "fix": "none"}]
    assert not p.errors
    # Time present, status V (receiver still acquiring): no position, no time.
    out, _ = decode(sentence("GPRMC,081836.00,V,3751.65,S,14507.36,E,,,130998,,,N")
                    + sentence("GPGGA,081836.00,3751.65,S,14507.36,E,0,03,,,M,,M,,"))
    assert out == [{"satellites": 3, "fix": "none"}]


def test_proprietary_and_unknown_sentences_ignored() -> None:
    f = next(fixes(start=START))
    data = (sentence("PUBX,00,103607.00,5327.03942,N,00214.42462,W,104.461,G3,29,31,0.085,39.63,-0.007,,5.88,7.62,8.09,6,0,0")
            + sentence("PGRME,15.0,M,45.0,M,25.0,M") + sentence("GPTXT,01,01,02,ANTSTATUS=OK")
            + sentence("GPGSV,1,1,00,1") + epoch_bytes(f))
    out, p = decode(data)
    assert out == [expected_values(f)]
    assert p.ignored == 4 and not p.errors


def test_many_sentences_per_read_and_split_at_every_byte() -> None:
    fs = list(itertools.islice(fixes(start=START), 3))
    data = b"".join(epoch_bytes(f) for f in fs)
    want = [expected_values(f) for f in fs]
    for cut in range(0, len(data) + 1, 3):
        p = NmeaProtocol()
        assert p.feed(data[:cut]) + p.feed(data[cut:]) + p.flush() == want


def test_noise_truncation_and_bad_checksum_resync() -> None:
    fs = list(itertools.islice(fixes(start=START), 40))
    rnd = random.Random(3)
    stream = bytearray()
    bad = 0
    for f in fs:
        r = rnd.random()
        if r < 0.25:
            stream += bytes(rnd.choice(b"\x00\xffabc,*\r\n#!") for _ in range(rnd.randrange(1, 30)))
        elif r < 0.5:
            e = epoch_bytes(f)
            stream += e[: rnd.randrange(2, 40)]  # truncated, no CRLF: restarted by the next '$'
        elif r < 0.6:
            s = bytearray(sentence("GNRMC,000000.00,A,0000.00,N,00000.00,E,0.0,0.0,010100,,,A"))
            s[12] ^= 0x02
            stream += s
            bad += 1
        stream += epoch_bytes(f)
    p = NmeaProtocol()
    got = []
    pos = 0
    while pos < len(stream):
        n = rnd.randrange(1, 50)
        got += p.feed(bytes(stream[pos : pos + n]))
        pos += n
    got += p.flush()
    assert got == [expected_values(f) for f in fs]
    assert p.errors["checksum"] == bad


def test_cr_only_and_lf_only_line_ends() -> None:
    f = next(fixes(start=START))
    e = epoch_bytes(f)
    for eol in (b"\r", b"\n"):
        out, p = decode(e.replace(b"\r\n", eol))
        assert out == [expected_values(f)] and not p.errors


def test_signed_longitude_and_high_precision_variants() -> None:
    # Unicore UM981 prints GLL longitude as "-0214.41467156,W"; the hemisphere rules.
    out, _ = decode(sentence("GNGLL,5327.03598945,N,-0214.41467156,W,130058.00,A,A"))
    assert out == [{"latitude": 53.450599824, "longitude": -2.240244526, "fix": "gps"}]
    # Unicore "...H" high-precision sentences have the standard layout.
    out, _ = decode(sentence("GNGGAH,073346.00,4004.73874301,N,11614.19077585,E,1,28,0.6,64.2831,M,8.4925,M,,"))
    assert out == [{"latitude": 40.07897905, "longitude": 116.236512931, "altitude": 64.2831,
                    "satellites": 28, "hdop": 0.6, "fix": "gps"}]


def test_overlong_sentence_dropped() -> None:
    f = next(fixes(start=START))
    out, p = decode(b"$GPTXT," + b"A" * 300 + b"\r\n" + epoch_bytes(f))
    assert out == [expected_values(f)]
    assert p.errors == {"malformed": 1}


# -- differential against pynmeagps ------------------------------------------------------------
def _random_sentences(rnd: random.Random) -> list[bytes]:
    out = []
    for _ in range(300):
        talker = rnd.choice(["GP", "GN", "GL", "GA", "BD", "GB"])
        lat = rnd.uniform(-89.99, 89.99)
        lon = rnd.uniform(-179.99, 179.99)
        la, lo = abs(lat), abs(lon)
        prec = rnd.choice([2, 4, 5, 8])
        lat_s = f"{int(la):02d}{(la - int(la)) * 60:0{3 + prec}.{prec}f}"
        lon_s = f"{int(lo):03d}{(lo - int(lo)) * 60:08.5f}"
        if lat_s[2:4] == "60" or lon_s[3:5] == "60":
            continue
        ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
        t = f"{rnd.randrange(24):02d}{rnd.randrange(60):02d}{rnd.randrange(60):02d}.{rnd.randrange(100):02d}"
        kind = rnd.choice(["RMC", "GGA", "GLL"])
        if kind == "RMC":
            body = (f"{talker}RMC,{t},A,{lat_s},{ns},{lon_s},{ew},{rnd.uniform(0, 99):.3f},"
                    f"{rnd.uniform(0, 359.9):.1f},{rnd.randrange(1, 29):02d}{rnd.randrange(1, 13):02d}{rnd.randrange(100):02d},,,A")
        elif kind == "GGA":
            body = (f"{talker}GGA,{t},{lat_s},{ns},{lon_s},{ew},{rnd.choice('1245')},{rnd.randrange(4, 30):02d},"
                    f"{rnd.uniform(0.5, 9):.1f},{rnd.uniform(-50, 3000):.1f},M,{rnd.uniform(-50, 60):.1f},M,,")
        else:
            body = f"{talker}GLL,{lat_s},{ns},{lon_s},{ew},{t},A,A"
        out.append(sentence(body))
    return out


def test_differential_against_pynmeagps() -> None:
    sentences = _random_sentences(random.Random(11))
    assert len(sentences) > 250
    for raw in sentences:
        ref = NMEAReader.parse(raw, validate=1)
        ours, p = decode(raw)
        assert not p.errors, raw
        assert len(ours) == 1, raw
        v = ours[0]
        assert v["latitude"] == pytest.approx(ref.lat, abs=1e-8), raw
        assert v["longitude"] == pytest.approx(ref.lon, abs=1e-8), raw
        if ref.msgID == "GGA":
            assert v["altitude"] == pytest.approx(ref.alt), raw
            assert v["satellites"] == ref.numSV and v["hdop"] == pytest.approx(ref.HDOP), raw
        if ref.msgID == "RMC":
            assert v["speed"] == pytest.approx(ref.spd * 1852 / 3600, abs=1e-4), raw
            assert v["course"] == pytest.approx(ref.cog), raw


def test_checksum_published_vectors_and_every_length() -> None:
    # NMEA 0183 examples as printed in the standard's tutorials (gpsd's "NMEA revealed").
    assert checksum(b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") == 0x47
    assert checksum(b"GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W") == 0x6A
    rnd = random.Random(5)
    for n in range(0, 200):  # the 8-byte folding against the definition, every padding
        body = bytes(rnd.randrange(256) for _ in range(n))
        want = 0
        for b in body:
            want ^= b
        assert checksum(body) == want, n
