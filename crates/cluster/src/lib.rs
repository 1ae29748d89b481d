//! Internal links between banter nodes.
