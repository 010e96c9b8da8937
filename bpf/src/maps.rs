//! Loading (once per node) and reusing (every later exec) the pinned maps and program,
//! and the typed operations on the maps.

use std::{fs, io, net::IpAddr, path::PathBuf};

use aya::{
    maps::{HashMap, Map, MapData, MapError, MapInfo, PerCpuArray},
    programs::SchedClassifier,
    EbpfLoader,
};

use crate::{
    layout::{self, Counters, Endpoint, EndpointKey, Managed},
    objects,
    pin::PinRoot,
    Error, Result,
};

/// Prefix of the program pin; the suffix is the object hash, so a new build never
/// reuses a program pinned by an older one.
const PROG_PIN_PREFIX: &str = "prog_redirect_";

/// The node's maps (and, lazily, its redirect program), opened from their pins or
/// created and pinned on first use.
pub struct Maps {
    pub(crate) root: PinRoot,
    /// The parsed object, only when this exec had to create maps or load the program:
    /// loading runs aya's kernel feature detection (which reads the kernel BTF, ~40 ms), so
    /// the common exec that finds everything pinned never builds one.
    ebpf: Option<aya::Ebpf>,
    pub endpoints: Endpoints,
    pub managed: ManagedMap,
    counters: PerCpuArray<MapData, Counters>,
    /// The pinned program, once [`Maps::program`] has run.
    prog: Option<SchedClassifier>,
}

/// Every map the object defines; all of them pinned means nothing needs creating.
const MAP_NAMES: [&str; 3] = [
    layout::MAP_ENDPOINTS,
    layout::MAP_COUNTERS,
    layout::MAP_MANAGED,
];

impl Maps {
    /// Open the pinned maps under `root`, creating and pinning them if absent.
    ///
    /// Pins left by a weft build with a different map layout are refused
    /// ([`Error::StaleMap`]) rather than reused with the wrong sizes.
    pub fn open_or_create(root: &PinRoot) -> Result<Maps> {
        root.ensure()?;
        // Two execs starting at once must not both create (and fail to pin) the maps.
        let _lock = root.lock()?;
        check_pinned_layouts(root)?;

        let map_err = |map: &'static str| move |source| Error::Map { map, source };
        let all_pinned = MAP_NAMES.iter().all(|n| root.path().join(n).exists());
        let (ebpf, endpoints, managed, counters) = if all_pinned {
            let pinned = |name: &'static str| {
                MapData::from_pin(root.path().join(name)).map_err(map_err(name))
            };
            (
                None,
                HashMap::try_from(Map::HashMap(pinned(layout::MAP_ENDPOINTS)?))
                    .map_err(map_err(layout::MAP_ENDPOINTS))?,
                HashMap::try_from(Map::HashMap(pinned(layout::MAP_MANAGED)?))
                    .map_err(map_err(layout::MAP_MANAGED))?,
                PerCpuArray::try_from(Map::PerCpuArray(pinned(layout::MAP_COUNTERS)?))
                    .map_err(map_err(layout::MAP_COUNTERS))?,
            )
        } else {
            let mut ebpf = load_object(root)?;
            let mut take = |name: &'static str| {
                ebpf.take_map(name).ok_or(Error::Map {
                    map: name,
                    source: MapError::InvalidName { name: name.into() },
                })
            };
            let endpoints = HashMap::try_from(take(layout::MAP_ENDPOINTS)?)
                .map_err(map_err(layout::MAP_ENDPOINTS))?;
            let managed = HashMap::try_from(take(layout::MAP_MANAGED)?)
                .map_err(map_err(layout::MAP_MANAGED))?;
            let counters = PerCpuArray::try_from(take(layout::MAP_COUNTERS)?)
                .map_err(map_err(layout::MAP_COUNTERS))?;
            (Some(ebpf), endpoints, managed, counters)
        };

        Ok(Maps {
            root: root.clone(),
            ebpf,
            endpoints: Endpoints {
                root: root.clone(),
                map: endpoints,
            },
            managed: ManagedMap { map: managed },
            counters,
            prog: None,
        })
    }

    pub fn root(&self) -> &PinRoot {
        &self.root
    }

    /// Counters summed over all CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let per_cpu = self.counters.get(&0, 0).map_err(|source| Error::Map {
            map: layout::MAP_COUNTERS,
            source,
        })?;
        let mut sum = Counters::default();
        per_cpu.iter().for_each(|c| sum.add(c));
        Ok(sum)
    }

    /// The redirect program, loaded and pinned once per build and reused afterwards.
    pub(crate) fn program(&mut self) -> Result<&mut SchedClassifier> {
        if self.prog.is_none() {
            let _lock = self.root.lock()?;
            let pin = self
                .root
                .path()
                .join(format!("{PROG_PIN_PREFIX}{}", objects::REDIRECT_OBJ_HASH));
            let prog = match self.open_pinned_program(&pin)? {
                Some(p) => p,
                None => self.load_and_pin_program(&pin)?,
            };
            self.prog = Some(prog);
        }
        Ok(self.prog.as_mut().expect("set above"))
    }

    /// The pinned program if it exists and still uses the pinned maps (it would not if
    /// someone removed and re-created the map pins after it was loaded).
    fn open_pinned_program(&self, pin: &PathBuf) -> Result<Option<SchedClassifier>> {
        let prog = match SchedClassifier::from_pin(pin) {
            Ok(p) => p,
            Err(e) if crate::error::program_errno(&e) == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(Error::program(format!("open {}", pin.display()), e)),
        };
        let info = prog.info().map_err(|e| Error::program("program info", e))?;
        let prog_maps = info
            .map_ids()
            .map_err(|e| Error::program("program map ids", e))?
            .unwrap_or_default();
        for name in [layout::MAP_ENDPOINTS, layout::MAP_COUNTERS] {
            let id = pinned_map_info(&self.root, name)?.map(|i| i.id());
            if id.is_none_or(|id| !prog_maps.contains(&id)) {
                tracing::warn!(pin = %pin.display(), "pinned program uses other maps; replacing it");
                fs::remove_file(pin)
                    .map_err(|e| Error::io(format!("remove {}", pin.display()), e))?;
                return Ok(None);
            }
        }
        Ok(Some(prog))
    }

    fn load_and_pin_program(&mut self, pin: &PathBuf) -> Result<SchedClassifier> {
        if self.ebpf.is_none() {
            // Maps came from pins; the loader finds them there and binds the program to them.
            self.ebpf = Some(load_object(&self.root)?);
        }
        let ebpf = self.ebpf.as_mut().expect("set above");
        let prog: &mut SchedClassifier = ebpf
            .program_mut(objects::REDIRECT_PROG)
            .ok_or_else(|| {
                Error::program(
                    objects::REDIRECT_PROG,
                    aya::programs::ProgramError::InvalidName {
                        name: objects::REDIRECT_PROG.into(),
                    },
                )
            })?
            .try_into()
            .map_err(|e| Error::program(objects::REDIRECT_PROG, e))?;
        prog.load()
            .map_err(|e| Error::program("load redirect program", e))?;
        prog.pin(pin).map_err(|e| Error::Io {
            context: format!("pin program at {}", pin.display()),
            source: io::Error::other(e),
        })?;
        // Programs of older builds stay alive while links use them; their pins only
        // keep them loaded after the last link is gone.
        if let Ok(dir) = fs::read_dir(self.root.path()) {
            for entry in dir.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(PROG_PIN_PREFIX) && entry.path() != *pin {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        SchedClassifier::from_pin(pin)
            .map_err(|e| Error::program(format!("open {}", pin.display()), e))
    }
}

/// Parses the redirect object, creating and pinning its maps under `root` or reusing the pins.
fn load_object(root: &PinRoot) -> Result<aya::Ebpf> {
    EbpfLoader::new()
        // The program uses no CO-RE relocations: no kernel BTF needed.
        .btf(None)
        .default_map_pin_directory(root.path())
        .load(objects::REDIRECT)
        .map_err(|e| Error::Load(Box::new(e)))
}

/// Info of the pinned map `name`, `None` if it is not pinned.
fn pinned_map_info(root: &PinRoot, name: &'static str) -> Result<Option<MapInfo>> {
    let path = root.path().join(name);
    if !path.exists() {
        return Ok(None);
    }
    MapInfo::from_pin(&path)
        .map(Some)
        .map_err(|source| Error::Map { map: name, source })
}

/// Refuse pins whose key/value sizes or capacity differ from this build's header.
fn check_pinned_layouts(root: &PinRoot) -> Result<()> {
    use std::mem::size_of;
    let expected = [
        (
            layout::MAP_ENDPOINTS,
            size_of::<EndpointKey>(),
            size_of::<Endpoint>(),
            layout::ENDPOINTS_MAX,
        ),
        (
            layout::MAP_COUNTERS,
            size_of::<u32>(),
            size_of::<Counters>(),
            layout::COUNTERS_MAX,
        ),
        (
            layout::MAP_MANAGED,
            size_of::<u64>(),
            size_of::<Managed>(),
            layout::MANAGED_MAX,
        ),
    ];
    for (name, key, value, max) in expected {
        if let Some(info) = pinned_map_info(root, name)? {
            let got = (
                info.key_size() as usize,
                info.value_size() as usize,
                info.max_entries(),
            );
            if got != (key, value, max) {
                return Err(Error::StaleMap {
                    path: root.path().join(name),
                    detail: format!(
                        "key/value/max_entries {got:?}, this build expects {:?}",
                        (key, value, max)
                    ),
                });
            }
        }
    }
    Ok(())
}

fn is_enoent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The `endpoints` map: destination pod address -> delivery.
pub struct Endpoints {
    root: PinRoot,
    map: HashMap<MapData, EndpointKey, Endpoint>,
}

impl Endpoints {
    fn err(source: MapError) -> Error {
        Error::Map {
            map: layout::MAP_ENDPOINTS,
            source,
        }
    }

    /// Insert or replace the entry for `ip` (the newest pod owning an address wins).
    pub fn insert(&mut self, ip: IpAddr, ep: &Endpoint) -> Result<()> {
        let _lock = self.root.lock()?;
        self.map
            .insert(EndpointKey::from(ip), ep, 0)
            .map_err(Self::err)
    }

    pub fn get(&self, ip: IpAddr) -> Result<Option<Endpoint>> {
        match self.map.get(&EndpointKey::from(ip), 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_enoent(&e) => Ok(None),
            Err(e) => Err(Self::err(e)),
        }
    }

    /// Remove the entry for `ip` only if it is still exactly `expected` (what we
    /// inserted). If the address was meanwhile given to a new pod, its entry stays.
    /// Returns whether something was removed; a missing entry is not an error.
    ///
    /// The kernel has no compare-and-delete for hash maps: the read-compare-delete runs
    /// under the pin-root lock, which every weft writer takes.
    pub fn remove_if_owner(&mut self, ip: IpAddr, expected: &Endpoint) -> Result<bool> {
        let _lock = self.root.lock()?;
        let key = EndpointKey::from(ip);
        match self.map.get(&key, 0) {
            Ok(v) if v == *expected => {}
            Ok(_) => return Ok(false),
            Err(e) if is_enoent(&e) => return Ok(false),
            Err(e) => return Err(Self::err(e)),
        }
        match self.map.remove(&key) {
            Ok(()) => Ok(true),
            Err(e) if is_enoent(&e) => Ok(false),
            Err(e) => Err(Self::err(e)),
        }
    }

    /// Every entry (for GC and inspection).
    pub fn list(&self) -> Result<Vec<(IpAddr, Endpoint)>> {
        let mut out = Vec::new();
        for kv in self.map.iter() {
            let (k, v) = kv.map_err(Self::err)?;
            if let Some(ip) = k.ip() {
                out.push((ip, v));
            }
        }
        Ok(out)
    }
}

/// The `managed` map: netns cookie -> mesh enrolment (see `host::netns_cookie`).
pub struct ManagedMap {
    map: HashMap<MapData, u64, Managed>,
}

impl ManagedMap {
    fn err(source: MapError) -> Error {
        Error::Map {
            map: layout::MAP_MANAGED,
            source,
        }
    }

    pub fn insert(&mut self, netns_cookie: u64, value: &Managed) -> Result<()> {
        self.map.insert(netns_cookie, value, 0).map_err(Self::err)
    }

    pub fn get(&self, netns_cookie: u64) -> Result<Option<Managed>> {
        match self.map.get(&netns_cookie, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_enoent(&e) => Ok(None),
            Err(e) => Err(Self::err(e)),
        }
    }

    /// Remove the enrolment; `Ok(false)` if there was none. Netns cookies are never
    /// reused during a boot, so no ownership check is needed.
    pub fn remove(&mut self, netns_cookie: u64) -> Result<bool> {
        match self.map.remove(&netns_cookie) {
            Ok(()) => Ok(true),
            Err(e) if is_enoent(&e) => Ok(false),
            Err(e) => Err(Self::err(e)),
        }
    }

    pub fn list(&self) -> Result<Vec<(u64, Managed)>> {
        self.map.iter().map(|kv| kv.map_err(Self::err)).collect()
    }
}
