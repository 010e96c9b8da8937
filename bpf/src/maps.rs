//! Loading (once per node) and reusing (every later exec) the pinned maps and program,
//! and the typed operations on the maps.

use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData, MapError, MapInfo, PerCpuArray},
    programs::{ProgramError, ProgramInfo, SchedClassifier},
    EbpfLoader,
};

use crate::{
    layout::{self, Counters, Device, Endpoint, EndpointKey, Managed},
    legacy, objects,
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
    pub devices: Devices,
    pub managed: ManagedMap,
    counters: PerCpuArray<MapData, Counters>,
    /// The pinned program, once [`Maps::program`] has run.
    prog: Option<SchedClassifier>,
    /// Kernel ids of the maps this exec opened from their pins, by name: the pinned program
    /// is checked against them without opening the maps again.
    pinned_ids: Vec<(&'static str, u32)>,
}

/// Key size, value size and capacity of a map.
type MapLayout = (usize, usize, u32);

/// Every map the object defines, with its layout in this build's header; all of them pinned
/// means nothing needs creating.
const MAPS: [(&str, MapLayout); 4] = [
    (
        layout::MAP_ENDPOINTS,
        (
            size_of::<EndpointKey>(),
            size_of::<Endpoint>(),
            layout::ENDPOINTS_MAX,
        ),
    ),
    (
        layout::MAP_DEVICES,
        (size_of::<u32>(), size_of::<Device>(), layout::DEVICES_MAX),
    ),
    (
        layout::MAP_COUNTERS,
        (
            size_of::<u32>(),
            size_of::<Counters>(),
            layout::COUNTERS_MAX,
        ),
    ),
    (
        layout::MAP_MANAGED,
        (size_of::<u64>(), size_of::<Managed>(), layout::MANAGED_MAX),
    ),
];

impl Maps {
    /// Open the pinned maps under `root`, creating and pinning them if absent.
    ///
    /// Pins of the previous layout (a release before network scoping) are moved aside for
    /// the pods still using them ([`crate::legacy`]); pins of an unknown layout are refused
    /// ([`Error::StaleMap`]) rather than reused with the wrong sizes.
    pub fn open_or_create(root: &PinRoot) -> Result<Maps> {
        root.ensure()?;
        // Two execs starting at once must not both create (and fail to pin) the maps.
        let _lock = root.lock()?;
        legacy::move_aside(root)?;
        // Every pinned map is opened once: its layout is checked on the fd the maps then use.
        let pinned = open_pinned_maps(root)?;
        let pinned_ids: Vec<(&'static str, u32)> = MAPS
            .iter()
            .zip(&pinned)
            .filter_map(|((name, _), p)| p.as_ref().map(|(_, id)| (*name, *id)))
            .collect();

        let map_err = |map: &'static str| move |source| Error::Map { map, source };
        let (ebpf, endpoints, devices, managed, counters) = match pinned {
            [Some((endpoints, _)), Some((devices, _)), Some((counters, _)), Some((managed, _))] => {
                (
                    None,
                    HashMap::try_from(Map::HashMap(endpoints))
                        .map_err(map_err(layout::MAP_ENDPOINTS))?,
                    HashMap::try_from(Map::HashMap(devices))
                        .map_err(map_err(layout::MAP_DEVICES))?,
                    HashMap::try_from(Map::HashMap(managed))
                        .map_err(map_err(layout::MAP_MANAGED))?,
                    PerCpuArray::try_from(Map::PerCpuArray(counters))
                        .map_err(map_err(layout::MAP_COUNTERS))?,
                )
            }
            partly => {
                drop(partly);
                let mut ebpf = load_object(root)?;
                let mut take = |name: &'static str| {
                    ebpf.take_map(name).ok_or(Error::Map {
                        map: name,
                        source: MapError::InvalidName { name: name.into() },
                    })
                };
                let endpoints = HashMap::try_from(take(layout::MAP_ENDPOINTS)?)
                    .map_err(map_err(layout::MAP_ENDPOINTS))?;
                let devices = HashMap::try_from(take(layout::MAP_DEVICES)?)
                    .map_err(map_err(layout::MAP_DEVICES))?;
                let managed = HashMap::try_from(take(layout::MAP_MANAGED)?)
                    .map_err(map_err(layout::MAP_MANAGED))?;
                let counters = PerCpuArray::try_from(take(layout::MAP_COUNTERS)?)
                    .map_err(map_err(layout::MAP_COUNTERS))?;
                (Some(ebpf), endpoints, devices, managed, counters)
            }
        };

        Ok(Maps {
            root: root.clone(),
            ebpf,
            endpoints: Endpoints {
                root: root.clone(),
                map: endpoints,
            },
            devices: Devices {
                root: root.clone(),
                map: devices,
            },
            managed: ManagedMap {
                root: root.clone(),
                map: managed,
            },
            counters,
            prog: None,
            pinned_ids,
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
        let prog = match program_from_pin(pin) {
            Ok(p) => p,
            Err(e) if crate::error::program_errno(&e) == Some(nix::libc::ENOENT) => {
                return Ok(None)
            }
            Err(e) => return Err(Error::program(format!("open {}", pin.display()), e)),
        };
        let info = prog.info().map_err(|e| Error::program("program info", e))?;
        let prog_maps = info
            .map_ids()
            .map_err(|e| Error::program("program map ids", e))?
            .unwrap_or_default();
        for name in [
            layout::MAP_ENDPOINTS,
            layout::MAP_DEVICES,
            layout::MAP_COUNTERS,
        ] {
            let id = match self.pinned_ids.iter().find(|(n, _)| *n == name) {
                Some((_, id)) => Some(*id),
                // Created by this exec (or pinned by another one meanwhile): ask the pin.
                None => pinned_map_info(&self.root, name)?.map(|i| i.id()),
            };
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
        program_from_pin(pin).map_err(|e| Error::program(format!("open {}", pin.display()), e))
    }
}

/// The redirect program of this build pinned under `root`, if any, opened without loading
/// anything (for tools that attach it by hand: the bench's kernel floor, weft-attach-floor).
pub fn pinned_program(root: &PinRoot) -> Result<Option<SchedClassifier>> {
    let pin = root
        .path()
        .join(format!("{PROG_PIN_PREFIX}{}", objects::REDIRECT_OBJ_HASH));
    match program_from_pin(&pin) {
        Ok(p) => Ok(Some(p)),
        Err(e) if crate::error::program_errno(&e) == Some(nix::libc::ENOENT) => Ok(None),
        Err(e) => Err(Error::program(format!("open {}", pin.display()), e)),
    }
}

/// The pinned redirect program. Not aya's `SchedClassifier::from_pin`: that asks the program's
/// name through `ProgramInfo::name_as_str`, which first runs aya's whole kernel feature
/// detection (a dozen probe program, map and BTF loads, several ms) only to learn whether the
/// kernel keeps program names. We know the name.
fn program_from_pin(pin: &Path) -> std::result::Result<SchedClassifier, ProgramError> {
    let info = ProgramInfo::from_pin(pin)?;
    SchedClassifier::from_program_info(info, objects::REDIRECT_PROG.into())
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

/// Each of [`MAPS`] opened from its pin with its kernel id (`None`: not pinned). Pins
/// whose key/value sizes or capacity differ from this build's header are refused
/// ([`Error::StaleMap`]) rather than used, also when only some maps are pinned: the loader
/// would reuse those pins by name.
fn open_pinned_maps(root: &PinRoot) -> Result<[Option<(MapData, u32)>; 4]> {
    let open = |(name, expected): (&'static str, MapLayout)| -> Result<Option<(MapData, u32)>> {
        let path = root.path().join(name);
        let err = |source| Error::Map { map: name, source };
        let data = match MapData::from_pin(&path) {
            Ok(d) => d,
            Err(e) if is_enoent(&e) => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let info = data.info().map_err(err)?;
        let got = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        if got != expected {
            return Err(Error::StaleMap {
                path,
                detail: format!("key/value/max_entries {got:?}, this build expects {expected:?}"),
            });
        }
        Ok(Some((data, info.id())))
    };
    let [endpoints, devices, counters, managed] = MAPS;
    Ok([
        open(endpoints)?,
        open(devices)?,
        open(counters)?,
        open(managed)?,
    ])
}

pub(crate) fn is_enoent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(nix::libc::ENOENT),
        _ => false,
    }
}

/// Compare-and-delete on a hash map: the kernel has none, so the read-compare-delete runs
/// under the pin-root lock, which every weft writer takes. Removes `key` only while its value
/// is still `expected`; a missing entry is not an error. Returns whether something was removed.
pub(crate) fn remove_if_equal<K: aya::Pod, V: aya::Pod + PartialEq>(
    root: &PinRoot,
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
    expected: &V,
) -> Result<bool> {
    let _lock = root.lock()?;
    let err = |source| Error::Map { map: name, source };
    match get_opt(map, key).map_err(err)? {
        Some(v) if v == *expected => {}
        _ => return Ok(false),
    }
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(e) if is_enoent(&e) => Ok(false),
        Err(e) => Err(err(e)),
    }
}

/// `get` with "no such key" as `None`.
pub(crate) fn get_opt<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    key: &K,
) -> std::result::Result<Option<V>, MapError> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_enoent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `endpoints` map: (network, destination pod address) -> delivery.
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

    /// Insert or replace the entry for `ip` in `network` (the newest pod owning an address in
    /// a network wins; other networks' entries for the same address are separate keys).
    pub fn insert(&mut self, network: u64, ip: IpAddr, ep: &Endpoint) -> Result<()> {
        let _lock = self.root.lock()?;
        self.map
            .insert(EndpointKey::new(network, ip), ep, 0)
            .map_err(Self::err)
    }

    pub fn get(&self, network: u64, ip: IpAddr) -> Result<Option<Endpoint>> {
        get_opt(&self.map, &EndpointKey::new(network, ip)).map_err(Self::err)
    }

    /// Remove the entry for `ip` in `network` only if it is still exactly `expected` (what we
    /// inserted). If the address was meanwhile given to a new pod, its entry stays.
    pub fn remove_if_owner(
        &mut self,
        network: u64,
        ip: IpAddr,
        expected: &Endpoint,
    ) -> Result<bool> {
        let key = EndpointKey::new(network, ip);
        remove_if_equal(
            &self.root,
            &mut self.map,
            layout::MAP_ENDPOINTS,
            &key,
            expected,
        )
    }

    /// Every entry as (network id, address, value), for GC and inspection.
    pub fn list(&self) -> Result<Vec<(u64, IpAddr, Endpoint)>> {
        let mut out = Vec::new();
        for kv in self.map.iter() {
            let (k, v) = kv.map_err(Self::err)?;
            if let Some(ip) = k.ip() {
                out.push((k.network, ip, v));
            }
        }
        Ok(out)
    }
}

/// The `devices` map: host-side veth ifindex -> the network of the pod behind it.
pub struct Devices {
    root: PinRoot,
    map: HashMap<MapData, u32, Device>,
}

impl Devices {
    fn err(source: MapError) -> Error {
        Error::Map {
            map: layout::MAP_DEVICES,
            source,
        }
    }

    /// Insert or replace (an ifindex of a deleted veth can come back on a new one).
    pub fn insert(&mut self, ifindex: u32, dev: &Device) -> Result<()> {
        let _lock = self.root.lock()?;
        self.map.insert(ifindex, dev, 0).map_err(Self::err)
    }

    pub fn get(&self, ifindex: u32) -> Result<Option<Device>> {
        get_opt(&self.map, &ifindex).map_err(Self::err)
    }

    /// Remove the entry only while it is still `expected` (see [`Endpoints::remove_if_owner`]).
    pub fn remove_if_owner(&mut self, ifindex: u32, expected: &Device) -> Result<bool> {
        remove_if_equal(
            &self.root,
            &mut self.map,
            layout::MAP_DEVICES,
            &ifindex,
            expected,
        )
    }

    pub fn list(&self) -> Result<Vec<(u32, Device)>> {
        self.map.iter().map(|kv| kv.map_err(Self::err)).collect()
    }
}

/// The `managed` map: netns cookie -> mesh enrolment (see `host::netns_cookie`).
pub struct ManagedMap {
    root: PinRoot,
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
        let _lock = self.root.lock()?;
        self.map.insert(netns_cookie, value, 0).map_err(Self::err)
    }

    pub fn get(&self, netns_cookie: u64) -> Result<Option<Managed>> {
        get_opt(&self.map, &netns_cookie).map_err(Self::err)
    }

    /// Remove the enrolment only while it is still `expected`: a pod enrolled through two
    /// networks shares one netns cookie, and one network's DEL must not unenrol the other's.
    pub fn remove_if_owner(&mut self, netns_cookie: u64, expected: &Managed) -> Result<bool> {
        remove_if_equal(
            &self.root,
            &mut self.map,
            layout::MAP_MANAGED,
            &netns_cookie,
            expected,
        )
    }

    pub fn list(&self) -> Result<Vec<(u64, Managed)>> {
        self.map.iter().map(|kv| kv.map_err(Self::err)).collect()
    }
}
