//! Fixtures come from make_fixtures.py (torch 2.13); expected.json holds torch's own float32
//! bit patterns, so every comparison is bit-exact. Hostile pickles are built here by hand.

use super::zip::widen;
use super::*;
use std::path::PathBuf;

fn fixture(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_pickle");
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn expected() -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_slice(&fixture("expected.json")).unwrap() {
        serde_json::Value::Object(map) => map,
        other => panic!("expected.json is not an object: {other}"),
    }
}

fn check(file: &str, got: &[(String, StoredTensor)], want: &serde_json::Value) {
    let want = want.as_array().unwrap();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|p| p[0].as_str().unwrap()).collect();
    assert_eq!(names, want_names, "{file}: names and order");
    for ((name, t), pair) in got.iter().zip(want) {
        let w = &pair[1];
        assert_eq!(
            format!("{:?}", t.dtype),
            w["dtype"].as_str().unwrap(),
            "{file} {name}"
        );
        let shape: Vec<usize> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{file} {name}: shape");
        // torch's own f16 -> f32 turns NaN into 0x7fffffff; the reader (like numpy) keeps the
        // IEEE payload. Any NaN is as good as another for a weight, so NaNs compare as equal.
        let canon = |b: u32| {
            if f32::from_bits(b).is_nan() {
                u32::MAX
            } else {
                b
            }
        };
        let bits: Vec<u32> = t.values.iter().map(|v| canon(v.to_bits())).collect();
        let want_bits: Vec<u32> = w["bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| canon(b.as_u64().unwrap() as u32))
            .collect();
        assert_eq!(bits, want_bits, "{file} {name}: values");
    }
}

#[test]
fn every_fixture_matches_what_torch_reads() {
    let expected = expected();
    assert_eq!(expected.len(), 8);
    for (file, want) in &expected {
        let bytes = fixture(file);
        let got = if file == "tensor.pt" {
            vec![(String::new(), read_tensor(&bytes).unwrap())]
        } else {
            read_state_dict(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"))
        };
        check(file, &got, want);
    }
}

#[test]
fn saev_layout_reads_whole_or_from_the_offset() {
    let bytes = fixture("saev_layout.pt");
    let json_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    assert!(bytes.starts_with(b"{\"d_vit\": 4"));
    let whole = read_state_dict(&bytes).unwrap();
    assert_eq!(whole, read_state_dict(&bytes[json_end..]).unwrap());
    assert_eq!(whole[0].1.shape, [4, 6]);
}

#[test]
fn views_share_one_storage_and_honour_offsets_and_strides() {
    let sd = read_state_dict(&fixture("views.pt")).unwrap();
    let get = |n: &str| &sd.iter().find(|(k, _)| k == n).unwrap().1;
    assert_eq!(get("slice").values, [8.0, 9.0, 10.0, 14.0, 15.0, 16.0]);
    assert_eq!(get("column").values, [4.0, 10.0, 16.0, 22.0]);
    assert_eq!(get("transposed").shape, [6, 4]);
    assert_eq!(get("transposed").values[..4], [0.0, 6.0, 12.0, 18.0]);
}

fn err(file: &str) -> PickleError {
    read_state_dict(&fixture(file)).expect_err(file)
}

#[test]
fn refuses_globals_by_name_without_running_them() {
    match err("hostile_os_system.pt") {
        PickleError::ForbiddenGlobal(name) => assert_eq!(name, "os.system"),
        other => panic!("{other}"),
    }
    let whole = err("whole_module.pt").to_string();
    assert!(whole.contains("torch.nn.modules.linear.Linear"), "{whole}");
    assert!(whole.contains("state_dict()"), "{whole}");
}

#[test]
fn damaged_or_foreign_archives_are_explained() {
    let cases = [
        ("no_data_pkl.pt", "data.pkl"),
        ("big_endian.pt", "big-endian"),
        ("missing_storage.pt", "missing from the archive"),
        (
            "short_storage.pt",
            "the tensor: its storage of 2 elements has only 4 bytes",
        ),
        ("legacy_format.pt", "legacy pre-1.6 format"),
    ];
    for (file, words) in cases {
        let msg = read_tensor(&fixture(file)).expect_err(file).to_string();
        assert!(msg.contains(words), "{file}: {msg}");
    }
    let neg = read_state_dict(&fixture("neg_view.pt"))
        .unwrap_err()
        .to_string();
    assert!(neg.contains("resolve_neg()"), "{neg}");
    assert!(read_tensor(&fixture("sae_f32.pt"))
        .unwrap_err()
        .to_string()
        .contains("a dict"));
    assert!(read_state_dict(&fixture("tensor.pt"))
        .unwrap_err()
        .to_string()
        .contains("tensor"));
    assert!(read_state_dict(b"").is_err() && read_state_dict(b"PK\x05\x06").is_err());
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_not_a_panic() {
    for file in ["sae_proto4.pt", "views.pt"] {
        let bytes = fixture(file);
        for cut in 0..bytes.len() {
            assert!(
                read_state_dict(&bytes[..cut]).is_err(),
                "{file} cut at {cut}"
            );
        }
        for at in 0..bytes.len() {
            for flip in [0x01, 0xff] {
                let mut b = bytes.clone();
                b[at] ^= flip;
                let _ = read_state_dict(&b);
            }
        }
    }
}

/// A minimal stored zip in torch's layout: `archive/data.pkl` and `archive/data/0`.
fn archive(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    let (mut out, mut dir): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    let u16s = |v: usize| (v as u16).to_le_bytes();
    let u32s = |v: usize| (v as u32).to_le_bytes();
    for (name, data) in [("archive/data.pkl", pickle), ("archive/data/0", storage)] {
        let offset = out.len();
        // version, flags, method, time, date, crc (unchecked), sizes, name length, extra length
        let common = [
            &u16s(20)[..],
            &[0; 12],
            &u32s(data.len()),
            &u32s(data.len()),
        ]
        .concat();
        let lengths = [u16s(name.len()), u16s(0)].concat();
        out.extend_from_slice(
            &[
                &u32s(0x0403_4b50)[..],
                &common,
                &lengths,
                name.as_bytes(),
                data,
            ]
            .concat(),
        );
        let dir_tail = [&[0; 10][..], &u32s(offset), name.as_bytes()].concat();
        dir.extend_from_slice(
            &[
                &u32s(0x0201_4b50)[..],
                &u16s(20),
                &common,
                &lengths,
                &dir_tail,
            ]
            .concat(),
        );
    }
    let counts = [u16s(0), u16s(0), u16s(2), u16s(2)].concat();
    let tail = [
        &u32s(0x0605_4b50)[..],
        &counts,
        &u32s(dir.len()),
        &u32s(out.len()),
        &u16s(0),
    ]
    .concat();
    out.extend_from_slice(&dir);
    out.extend_from_slice(&tail);
    out
}

fn s(text: &str) -> Vec<u8> {
    [&[0x8c, text.len() as u8][..], text.as_bytes()].concat()
}

/// `_rebuild_tensor_v2` of a float storage of `numel` elements, with `args` (offset, size tuple,
/// stride tuple) already encoded as pickle opcodes.
fn tensor_pickle(numel: u8, args: &[u8]) -> Vec<u8> {
    let head = [
        &b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(("[..],
        &s("storage"),
    ]
    .concat();
    let pid = [
        &b"ctorch\nFloatStorage\n"[..],
        &s("0"),
        &s("cpu"),
        &[b'K', numel, b't', b'Q'],
    ]
    .concat();
    [&head[..], &pid, args, b"\x89N\x74R."].concat()
}

#[test]
fn hand_built_archives_read_and_bound_their_layouts() {
    let storage: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // offset 1, size (3,), stride (1,): the last three elements.
    let ok = tensor_pickle(4, b"K\x01K\x03\x85K\x01\x85");
    assert_eq!(
        read_tensor(&archive(&ok, &storage)).unwrap().values,
        [2.0, 3.0, 4.0]
    );
    // size (2, 1), stride (1, 2^62): a size-1 dimension's stride is never used to read.
    let wide = tensor_pickle(4, b"K\x00K\x02K\x01\x86K\x01\x8a\x08\0\0\0\0\0\0\0\x40\x86");
    assert_eq!(
        read_tensor(&archive(&wide, &storage)).unwrap().values,
        [1.0, 2.0]
    );
    let past = tensor_pickle(4, b"K\x02K\x03\x85K\x01\x85");
    let msg = read_tensor(&archive(&past, &storage))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("reaches past its storage"), "{msg}");
    // size (2^40,) with stride 0: a terabyte-sized expansion of one element.
    let huge = tensor_pickle(4, b"K\x00\x8a\x06\x00\x00\x00\x00\x00\x01\x85K\x00\x85");
    let msg = read_tensor(&archive(&huge, &storage))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("implausibly large"), "{msg}");
    let negative = tensor_pickle(4, b"K\x00K\x02\x85J\xff\xff\xff\xff\x85");
    let msg = read_tensor(&archive(&negative, &storage))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("negative"), "{msg}");
}

#[test]
fn hostile_pickle_shapes_fail_cleanly() {
    let read = |pickle: Vec<u8>| read_tensor(&archive(&pickle, b"")).unwrap_err().to_string();
    // Deep nesting would overflow the stack when dropped, if it were allowed.
    let deep = [&b"\x80\x02K\x01"[..], &[0x85; 100_000], b"."].concat();
    assert!(read(deep).contains("nested too deeply"));
    // Growing a memoized dict through fresh copies costs quadratic memory, if it were allowed.
    let grow: Vec<u8> = (0..5_000u32)
        .flat_map(|i| [&b"h\x00J"[..], &i.to_le_bytes(), b"K\x00sq\x00"].concat())
        .collect();
    assert!(read([&b"\x80\x02}q\x00"[..], &grow, b"."].concat()).contains("too much copying"));
    let stack_global = [&b"\x80\x04"[..], &s("builtins"), &s("eval"), b"\x93."].concat();
    assert!(read(stack_global).contains("`builtins.eval`"));
    let v3 = read(b"\x80\x02ctorch._utils\n_rebuild_tensor_v3\n.".to_vec());
    assert!(
        v3.starts_with("unsupported") && v3.contains("_rebuild_tensor_v3"),
        "{v3}"
    );
    assert!(read(b"\x80\x02(t0.".to_vec()).contains("opcode 0x30"));
    assert!(read(b"\x80\x02e.".to_vec()).contains("mark is missing"));
    assert!(read(b"\x80\x02h\x07.".to_vec()).contains("memo entry is missing"));
    assert!(read(b"\x80\x02}K\x01".to_vec()).contains("truncated"));
}

#[test]
fn zip64_extra_fields_replace_only_the_overflowed_ones() {
    // Another block first, then the zip64 block with the compressed size and offset.
    let mut extra = vec![0x55, 0x54, 1, 0, 9];
    extra.extend(
        [
            &[1, 0, 16, 0][..],
            &5u64.to_le_bytes(),
            &(1u64 << 33).to_le_bytes(),
        ]
        .concat(),
    );
    let fields = [7, 0xffff_ffff, 0xffff_ffff];
    assert_eq!(widen(&extra, fields), Some([7, 5, 1 << 33]));
    assert_eq!(widen(&extra, [1, 2, 3]), Some([1, 2, 3]));
    assert_eq!(widen(&extra[..10], fields), None);
}
