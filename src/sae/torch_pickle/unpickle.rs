//! The object pickle of `torch.save`: a stack machine restricted to what it emits for tensors
//! and dicts.

use std::collections::HashMap;
use std::rc::Rc;

use super::*;

/// Deep enough for any torch.save state dict; bounding it keeps dropping values from recursing
/// arbitrarily deep on a hostile file.
pub(super) const MAX_DEPTH: u8 = 32;
/// Containers are copied on write, not shared and mutated; this caps copying on hostile input
/// (torch's own pickles copy nothing: each dict is filled before anything else refers to it).
pub(super) const MAX_COPIED: usize = 1 << 20;

#[derive(Clone, Copy)]
pub(super) enum Callable {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    StorageType(StoredDtype),
}

pub(super) struct StorageRef {
    pub(super) dtype: StoredDtype,
    pub(super) key: String,
    pub(super) numel: usize,
}

pub(super) struct TensorRef {
    pub(super) storage: Rc<StorageRef>,
    pub(super) offset: usize,
    /// (size, stride) per dimension, outermost first.
    pub(super) dims: Vec<(usize, usize)>,
}

impl TensorRef {
    pub(super) fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|&(d, _)| d).collect()
    }
}

/// A pickled value; containers carry their nesting depth.
#[derive(Clone)]
pub(super) enum V {
    Other(&'static str),
    Int(i64),
    Str(Rc<str>),
    Tuple(Rc<Vec<V>>, u8),
    List(Rc<Vec<V>>, u8),
    Dict(Rc<Vec<(V, V)>>, u8),
    Call(Callable),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl V {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            V::Other(k) => k,
            V::Int(_) => "int",
            V::Str(_) => "str",
            V::Tuple(..) => "tuple",
            V::List(..) => "list",
            V::Dict(..) => "dict",
            V::Call(_) => "callable",
            V::Storage(_) => "storage",
            V::Tensor(_) => "tensor",
        }
    }
}

/// The depth of a container that holds `child`, given its depth so far.
pub(super) fn nested(depth: u8, child: &V) -> Result<u8, PickleError> {
    let d = match child {
        V::Tuple(_, d) | V::List(_, d) | V::Dict(_, d) => depth.max(d + 1),
        _ => depth,
    };
    let deep = || malformed("values are nested too deeply");
    (d <= MAX_DEPTH).then_some(d).ok_or_else(deep)
}

pub(super) fn global(module: &str, name: &str) -> Result<Callable, PickleError> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Callable::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Callable::RebuildTensor),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Ok(Callable::RebuildParameter)
        }
        ("torch", class) if class.ends_with("Storage") => StoredDtype::from_storage(class)
            .map(Callable::StorageType)
            .ok_or_else(|| unsupported(format!("tensors stored as torch.{class}"))),
        ("torch._utils", f) if f.starts_with("_rebuild_") => Err(unsupported(format!(
            "tensors rebuilt by torch._utils.{f} (sparse, quantized or newer dtypes)"
        ))),
        _ => Err(PickleError::ForbiddenGlobal(format!("{module}.{name}"))),
    }
}

#[derive(Default)]
pub(super) struct Machine<'p> {
    pub(super) p: &'p [u8],
    pub(super) pos: usize,
    pub(super) stack: Vec<V>,
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u32, V>,
    pub(super) copied: usize,
}

impl<'p> Machine<'p> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'p [u8], PickleError> {
        let (start, end) = (self.pos, self.pos.saturating_add(n));
        self.pos = end;
        let cut = || malformed("it is truncated");
        self.p.get(start..end).ok_or_else(cut)
    }
    pub(super) fn n<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        self.take(N).map(arr)
    }
    pub(super) fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.n::<1>()?[0])
    }
    pub(super) fn str(&mut self, n: usize) -> Result<V, PickleError> {
        let s =
            std::str::from_utf8(self.take(n)?).map_err(|_| malformed("a string is not UTF-8"))?;
        Ok(V::Str(s.into()))
    }
    pub(super) fn line(&mut self) -> Result<&'p str, PickleError> {
        let rest = self.p.get(self.pos..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| malformed("unended name"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| malformed("a name is not UTF-8"));
        self.pos += n + 1;
        s
    }
    pub(super) fn pop(&mut self) -> Result<V, PickleError> {
        self.stack.pop().ok_or_else(|| malformed("stack underflow"))
    }
    pub(super) fn pop_str(&mut self) -> Result<Rc<str>, PickleError> {
        match self.pop()? {
            V::Str(s) => Ok(s),
            v => Err(malformed(format!("a global's name is a {}", v.kind()))),
        }
    }
    pub(super) fn pop_mark(&mut self) -> Result<Vec<V>, PickleError> {
        let mark = self.marks.pop().filter(|&m| m <= self.stack.len());
        let mark = mark.ok_or_else(|| malformed("a mark is missing"))?;
        Ok(self.stack.split_off(mark))
    }
    pub(super) fn memo_index(&mut self, long: bool) -> Result<u32, PickleError> {
        Ok(if long {
            u32::from_le_bytes(self.n()?)
        } else {
            self.byte()?.into()
        })
    }
    /// Appends to the list, or sets items of the dict, on top of the stack.
    pub(super) fn fill(&mut self, items: Vec<V>, dict: bool) -> Result<(), PickleError> {
        let copied = &mut self.copied;
        let mut cow = |len: usize, shared: bool| {
            *copied += if shared { len } else { 0 };
            let too_much = || malformed("too much copying");
            (*copied <= MAX_COPIED).then_some(()).ok_or_else(too_much)
        };
        match self.stack.last_mut() {
            Some(V::List(list, depth)) if !dict => {
                cow(list.len(), Rc::strong_count(list) > 1)?;
                for v in items {
                    *depth = nested(*depth, &v)?;
                    Rc::make_mut(list).push(v);
                }
            }
            Some(V::Dict(map, depth)) if dict && items.len().is_multiple_of(2) => {
                cow(map.len(), Rc::strong_count(map) > 1)?;
                let mut items = items.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    *depth = nested(nested(*depth, &k)?, &v)?;
                    Rc::make_mut(map).push((k, v));
                }
            }
            _ => return Err(malformed("items are added to something not a list or dict")),
        }
        Ok(())
    }
}

pub(super) fn unpickle(p: &[u8]) -> Result<V, PickleError> {
    let mut m = Machine {
        p,
        ..Machine::default()
    };
    loop {
        let at = m.pos;
        // Arms that leave the stack as is `continue`; the others evaluate to the value pushed.
        let v = match m.byte()? {
            0x80 => match m.byte()? {
                proto @ 6.. => return Err(unsupported(format!("pickle protocol {proto}"))),
                _ => continue,
            },
            0x95 => {
                m.take(8)?; // FRAME: only a read-ahead hint
                continue;
            }
            b'c' => V::Call(global(m.line()?, m.line()?)?),
            0x93 => {
                let name = m.pop_str()?;
                V::Call(global(&m.pop_str()?, &name)?)
            }
            op @ (b'q' | b'r' | 0x94) => {
                let i = if op == 0x94 {
                    m.memo.len() as u32
                } else {
                    m.memo_index(op == b'r')?
                };
                let top = m.stack.last().ok_or_else(|| malformed("stack underflow"))?;
                m.memo.insert(i, top.clone());
                continue;
            }
            op @ (b'h' | b'j') => {
                let i = m.memo_index(op == b'j')?;
                let missing = || malformed("a memo entry is missing");
                m.memo.get(&i).cloned().ok_or_else(missing)?
            }
            b'(' => {
                m.marks.push(m.stack.len());
                continue;
            }
            b'}' => V::Dict(Rc::default(), 1),
            b']' => V::List(Rc::default(), 1),
            b')' => V::Tuple(Rc::default(), 1),
            b't' => tuple(m.pop_mark()?)?,
            op @ 0x85..=0x87 => {
                let n = m.stack.len().checked_sub(usize::from(op - 0x84));
                tuple(
                    m.stack
                        .split_off(n.ok_or_else(|| malformed("stack underflow"))?),
                )?
            }
            op @ (b'a' | b's' | b'e' | b'u' | b'b') => {
                let items = match op {
                    b'a' | b'b' => vec![m.pop()?],
                    b's' => m.stack.split_off(m.stack.len().saturating_sub(2)),
                    _ => m.pop_mark()?,
                };
                // BUILD only sets OrderedDict._metadata, which leaves the values as they are.
                if op != b'b' {
                    m.fill(items, matches!(op, b's' | b'u'))?;
                }
                continue;
            }
            b'J' => V::Int(i32::from_le_bytes(m.n()?).into()),
            b'K' => V::Int(m.byte()?.into()),
            b'M' => V::Int(u16::from_le_bytes(m.n()?).into()),
            0x8a => {
                let n = usize::from(m.byte()?);
                let b = m.take(n)?;
                if n > 8 {
                    return Err(unsupported("an integer wider than 64 bits"));
                }
                // Little-endian two's complement: start from the sign, shift bytes in from the top.
                let sign = -i64::from(b.last().is_some_and(|&t| t >= 0x80));
                V::Int(b.iter().rev().fold(sign, |a, &x| a << 8 | i64::from(x)))
            }
            b'X' => {
                let n = u32::from_le_bytes(m.n()?) as usize;
                m.str(n)?
            }
            0x8c => {
                let n = usize::from(m.byte()?);
                m.str(n)?
            }
            b'Q' => V::Storage(Rc::new(storage(m.pop()?)?)),
            b'R' => {
                let args = m.pop()?;
                call(m.pop()?, args)?
            }
            0x88 | 0x89 => V::Other("bool"),
            b'N' => V::Other("None"),
            b'G' => m.take(8).map(|_| V::Other("float"))?,
            b'.' => return m.pop(),
            op => {
                let why = "is not one torch.save writes for tensors";
                return Err(malformed(format!("opcode 0x{op:02x} at byte {at} {why}")));
            }
        };
        m.stack.push(v);
    }
}

pub(super) fn tuple(items: Vec<V>) -> Result<V, PickleError> {
    let depth = items.iter().try_fold(1, nested)?;
    Ok(V::Tuple(Rc::new(items), depth))
}

pub(super) fn index(v: &V, what: &str) -> Result<usize, PickleError> {
    match v {
        V::Int(i) => usize::try_from(*i).map_err(|_| malformed(format!("{what} is negative"))),
        v => Err(malformed(format!("{what} is a {}", v.kind()))),
    }
}

pub(super) fn indices(v: &V, what: &str) -> Result<Vec<usize>, PickleError> {
    match v {
        V::Tuple(items, _) => items.iter().map(|x| index(x, what)).collect(),
        v => Err(malformed(format!("a tensor's {what} is a {}", v.kind()))),
    }
}

/// Resolves torch's persistent id `('storage', <type>, key, location, numel)`; the bytes are
/// looked up only once the whole pickle has been read.
pub(super) fn storage(pid: V) -> Result<StorageRef, PickleError> {
    let items = match &pid {
        V::Tuple(items, _) => items.as_slice(),
        _ => &[],
    };
    match items {
        [V::Str(tag), V::Call(Callable::StorageType(dtype)), V::Str(key), V::Str(_), n]
            if &**tag == "storage" =>
        {
            let (dtype, key, numel) = (*dtype, key.to_string(), index(n, "a storage size")?);
            Ok(StorageRef { dtype, key, numel })
        }
        _ => Err(malformed("a persistent id is not torch's storage tuple")),
    }
}

pub(super) fn call(f: V, args: V) -> Result<V, PickleError> {
    let V::Tuple(args, _) = args else {
        return Err(malformed("a call's arguments are not a tuple"));
    };
    match (&f, args.as_slice()) {
        (V::Call(Callable::OrderedDict), []) => Ok(V::Dict(Rc::default(), 1)),
        (V::Call(Callable::RebuildParameter), [t @ V::Tensor(_), ..]) => Ok(t.clone()),
        // (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
        (
            V::Call(Callable::RebuildTensor),
            [V::Storage(s), offset, size, stride, _, _, meta @ ..],
        ) => {
            // torch adds metadata only for a lazily negated (or conjugated) view: its stored
            // values are not the tensor's.
            let plain = match meta {
                [] => true,
                [V::Dict(m, _)] => m.is_empty(),
                _ => false,
            };
            if !plain {
                return Err(unsupported(
                    "a lazily negated view (save `t.resolve_neg()`)",
                ));
            }
            let (size, stride) = (indices(size, "size")?, indices(stride, "stride")?);
            if size.len() != stride.len() {
                return Err(malformed("a tensor's size and stride differ in length"));
            }
            let (storage, offset) = (s.clone(), index(offset, "a storage offset")?);
            let dims = size.into_iter().zip(stride).collect();
            Ok(V::Tensor(Rc::new(TensorRef {
                storage,
                offset,
                dims,
            })))
        }
        _ => Err(malformed(format!("unexpected arguments to a {}", f.kind()))),
    }
}
