//! The map layout of releases before network scoping (layout 1), kept so pods attached by such a
//! release keep working after an in-place upgrade and their DEL still removes exactly their own
//! entries.
//!
//! Layout 1 keyed `endpoints` by address alone and had no `devices` map; its pins sat directly
//! under the pin root, where the current layout's pins go now. The first exec of a newer
//! release (under the pin-root lock) renames them into `<root>/legacy-v1/`: a rename in bpffs
//! moves only the name, so the old program keeps using the very same maps, and the pods it serves
//! keep their fast path among themselves (a packet between an old and a new pod finds no entry
//! and takes the normal path). Records written by that release say nothing of a layout and are
//! detached against these maps. When no such record is left, [`remove_if_unused`] drops them.

use std::{fs, io, net::IpAddr, path::PathBuf};

use aya::maps::{HashMap, Map, MapData, MapInfo};

use crate::{
    layout::{self, addr_bytes, Endpoint},
    maps::{get_opt, remove_if_equal},
    pin::PinRoot,
    Error, Result,
};

/// Where layout 1's pins are moved to.
pub const LEGACY_V1_DIR: &str = "legacy-v1";

/// Layout 1's `struct weft_endpoint_key` (frozen: 16 address bytes, family, 3 pad bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EndpointKeyV1 {
    addr: [u8; 16],
    family: u8,
    pad: [u8; 3],
}

/// Layout 1's `struct weft_managed` (frozen: flags, ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagedV1 {
    pub flags: u32,
    pub ifindex: u32,
}

// SAFETY: repr(C) integers and byte arrays without implicit padding (sizes tested below).
unsafe impl aya::Pod for EndpointKeyV1 {}
unsafe impl aya::Pod for ManagedV1 {}

impl EndpointKeyV1 {
    fn new(ip: IpAddr) -> Self {
        let (family, addr) = addr_bytes(ip);
        EndpointKeyV1 {
            addr,
            family,
            pad: [0; 3],
        }
    }
}

/// Maps layout 1 pinned (the names it used).
const V1_MAPS: [&str; 3] = [
    layout::MAP_ENDPOINTS,
    layout::MAP_COUNTERS,
    layout::MAP_MANAGED,
];

fn legacy_dir(root: &PinRoot) -> PathBuf {
    root.path().join(LEGACY_V1_DIR)
}

/// Moves layout 1's pins out of the current layout's way. Call with the pin-root lock held.
pub(crate) fn move_aside(root: &PinRoot) -> Result<()> {
    let endpoints = root.path().join(layout::MAP_ENDPOINTS);
    let Ok(info) = MapInfo::from_pin(&endpoints) else {
        return Ok(()); // nothing pinned (or not a map: opening the maps will say)
    };
    if info.key_size() as usize != std::mem::size_of::<EndpointKeyV1>() {
        return Ok(());
    }
    let dir = legacy_dir(root);
    fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    for name in V1_MAPS {
        let from = root.path().join(name);
        let to = dir.join(name);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("move {} to {}", from.display(), to.display()),
                    e,
                ))
            }
        }
    }
    tracing::info!(dir = %dir.display(), "moved the maps of pin layout 1 aside for the pods still using them");
    Ok(())
}

/// Layout 1's maps, as far as they are still pinned.
pub struct LegacyMaps {
    root: PinRoot,
    endpoints: Option<HashMap<MapData, EndpointKeyV1, Endpoint>>,
    managed: Option<HashMap<MapData, u64, ManagedV1>>,
}

impl LegacyMaps {
    /// Opens what is pinned in `<root>/legacy-v1/` (nothing pinned: both maps absent).
    pub fn open(root: &PinRoot) -> Result<LegacyMaps> {
        let dir = legacy_dir(root);
        let open = |name: &'static str| -> Result<Option<MapData>> {
            let path = dir.join(name);
            if !path.exists() {
                return Ok(None);
            }
            MapData::from_pin(&path)
                .map(Some)
                .map_err(|source| Error::Map { map: name, source })
        };
        let endpoints = open(layout::MAP_ENDPOINTS)?
            .map(|m| HashMap::try_from(Map::HashMap(m)))
            .transpose()
            .map_err(|source| Error::Map {
                map: layout::MAP_ENDPOINTS,
                source,
            })?;
        let managed = open(layout::MAP_MANAGED)?
            .map(|m| HashMap::try_from(Map::HashMap(m)))
            .transpose()
            .map_err(|source| Error::Map {
                map: layout::MAP_MANAGED,
                source,
            })?;
        Ok(LegacyMaps {
            root: root.clone(),
            endpoints,
            managed,
        })
    }

    pub fn endpoint(&self, ip: IpAddr) -> Result<Option<Endpoint>> {
        match &self.endpoints {
            Some(m) => get_opt(m, &EndpointKeyV1::new(ip)).map_err(|source| Error::Map {
                map: layout::MAP_ENDPOINTS,
                source,
            }),
            None => Ok(None),
        }
    }

    /// Removes the entry for `ip` while it is still `expected`.
    pub fn remove_endpoint_if_owner(&mut self, ip: IpAddr, expected: &Endpoint) -> Result<bool> {
        match &mut self.endpoints {
            Some(m) => remove_if_equal(
                &self.root,
                m,
                layout::MAP_ENDPOINTS,
                &EndpointKeyV1::new(ip),
                expected,
            ),
            None => Ok(false),
        }
    }

    pub fn managed(&self, netns_cookie: u64) -> Result<Option<ManagedV1>> {
        match &self.managed {
            Some(m) => get_opt(m, &netns_cookie).map_err(|source| Error::Map {
                map: layout::MAP_MANAGED,
                source,
            }),
            None => Ok(None),
        }
    }

    /// Layout 1 had no owner in `managed`: netns cookies are unique per boot, and that release
    /// enrolled a pod through one network at most.
    pub fn remove_managed(&mut self, netns_cookie: u64) -> Result<bool> {
        match &mut self.managed {
            Some(m) => match m.remove(&netns_cookie) {
                Ok(()) => Ok(true),
                Err(e) if crate::maps::is_enoent(&e) => Ok(false),
                Err(source) => Err(Error::Map {
                    map: layout::MAP_MANAGED,
                    source,
                }),
            },
            None => Ok(false),
        }
    }
}

/// Drops layout 1's pins once no pod uses them (the caller knows: no legacy record is left).
/// The maps themselves go when the last program using them is detached.
pub fn remove_if_unused(root: &PinRoot) -> Result<()> {
    let dir = legacy_dir(root);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layout_1_sizes_are_frozen() {
        // What releases before network scoping pinned: a key of 20 bytes, managed of 8.
        assert_eq!(size_of::<EndpointKeyV1>(), 20);
        assert_eq!(size_of::<ManagedV1>(), 8);
        assert_ne!(
            size_of::<EndpointKeyV1>(),
            size_of::<crate::EndpointKey>(),
            "the current key size must tell the layouts apart"
        );
    }
}
