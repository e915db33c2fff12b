"""Add-on preferences (this machine's engine) and per-scene settings (``scene.kiln``)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty



class KilnPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_mode: EnumProperty(
        name="Engine",
        items=[
            ("LOCAL", "Local", "Start the engine on this computer with the Python below (started on first use, stopped with Blender)"),
            ("REMOTE", "Remote", "Use an engine already running (`kiln serve`), e.g. on a GPU server"),
        ],
        default="LOCAL",
    )
    python_path: StringProperty(
        name="Engine Python",
        description="Python executable of the environment where Kiln's engine is installed, e.g. ~/miniconda3/envs/kiln/bin/python. "
        "It is started directly as `<python> -m engine serve` (not through `conda run`)",
        subtype="FILE_PATH",
        default="",
    )
    extra_env: StringProperty(
        name="Extra environment",
        description="Variables for the local engine, NAME=value separated by ';', e.g. "
        "CUDA_HOME=/usr/local/cuda-11.8;PATH=$CUDA_HOME/bin:$PATH ($NAME expands)",
        default="",
    )
    engine_url: StringProperty(name="Engine URL", description="URL of a running `kiln serve`, e.g. http://gpu-box:8765 or an SSH-tunnelled http://127.0.0.1:8765", default="http://127.0.0.1:8765")
    token: StringProperty(name="Token", description="The engine's --token (needed when it is not on this computer's loopback)", subtype="PASSWORD", default="")
    timeout: FloatProperty(name="Request timeout", description="Seconds to wait for an answer to one request", default=10.0, min=1.0, max=600.0, subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE")
    start_timeout: FloatProperty(name="Start timeout", description="Seconds to wait for the local engine to start", default=120.0, min=5.0, max=1800.0, unit="TIME_ABSOLUTE")
    transfer_timeout: FloatProperty(name="Transfer timeout", description="Seconds allowed for one upload or download", default=300.0, min=5.0, max=7200.0, unit="TIME_ABSOLUTE")
    job_timeout: FloatProperty(name="Job timeout", description="Cancel a job that takes longer than this many seconds (0: no limit)", default=0.0, min=0.0, max=86400.0, unit="TIME_ABSOLUTE")

    def draw(self, context):
        layout = self.layout
        layout.row().prop(self, "engine_mode", expand=True)
        col = layout.column()
        if self.engine_mode == "LOCAL":
            col.prop(self, "python_path")
            col.prop(self, "extra_env")
            col.prop(self, "start_timeout")
        else:
            col.prop(self, "engine_url")
            col.prop(self, "token")
        row = col.row(align=True)
        row.prop(self, "timeout")
        row.prop(self, "transfer_timeout")
        col.prop(self, "job_timeout")
        from . import ui

        ui.draw_engine_status(layout, context)


class KilnSceneSettings(bpy.types.PropertyGroup):
    faces: IntProperty(name="Target faces", description="Triangle count of the low-poly result (the source is kept if it has fewer)", default=5000, min=4, max=10_000_000, soft_min=100, soft_max=200_000)
    texture_size: IntProperty(name="Texture size", description="Side of the square base-colour texture in pixels", default=1024, min=16, max=8192, soft_min=128, soft_max=4096)
    device: EnumProperty(
        name="Device",
        items=[("AUTO", "Auto", "GPU (CUDA) when the engine has one, else CPU"), ("CUDA", "CUDA", "NVIDIA GPU (nvdiffrast)"), ("CPU", "CPU", "Embree ray casting on the CPU")],
        default="AUTO",
    )
    views: IntProperty(name="Views", description="Camera views used by the GPU bake and by splat/reconstruction sources", default=100, min=1, max=1000)
    hide_source: BoolProperty(name="Hide source", description="Hide the source objects (and, in Active mode, the original low-poly) once the result is in the scene", default=True)
    target_mode: EnumProperty(
        name="Target",
        description="What the selected objects bake into",
        items=[
            ("NEW", "New", "All selected mesh objects (modifiers, materials, placement) form one source; Kiln makes a new low-poly, UV-unwrapped result"),
            ("ACTIVE", "Active", "Selected to Active, as in Cycles: the active mesh is the target (its vertices, UV map, modifiers and rig are kept) and the other selected meshes are the sources"),
        ],
        default="NEW",
    )
    maps_auto: BoolProperty(
        name="Auto maps",
        description="Bake every channel the source has (base colour always; normal when the result is simplified or a target is given; ORM and emissive when the source's materials use them)",
        default=True,
    )
    maps: EnumProperty(
        name="Maps",
        description="The texture maps to bake (when Auto is off)",
        items=[
            ("BASE", "Base", "Base colour (with alpha when the source has it)"),
            ("NORMAL", "Normal", "Tangent-space normal map (the source's detail on the low-poly)"),
            ("ORM", "ORM", "Occlusion / roughness / metallic in one image"),
            ("EMISSIVE", "Emissive", "Emission colour"),
        ],
        options={"ENUM_FLAG"},
        default={"BASE", "NORMAL", "ORM", "EMISSIVE"},
    )

    vertex_colors: EnumProperty(
        name="Vertex colours",
        description="How the source's vertex colours blend across a triangle",
        items=[
            ("LINEAR", "Linear", "As Blender and glTF blend them (your own colour attributes)"),
            ("SRGB", "sRGB", "As TRELLIS, SAM 3D and Hunyuan3D render their meshes (imported AI-generated assets)"),
        ],
        default="LINEAR",
    )

    image_source: EnumProperty(name="Image", items=[("FILE", "File", "An image file on disk"), ("IMAGE", "Image", "An image in this .blend (packed images too)")], default="FILE")
    image_path: StringProperty(name="Image file", subtype="FILE_PATH", default="")
    image: PointerProperty(name="Image", type=bpy.types.Image)
    mask_source: EnumProperty(
        name="Mask",
        items=[
            ("AUTO", "Alpha / Auto", "The image's alpha channel when it has one, else automatic foreground detection"),
            ("FILE", "File", "A mask image file: any non-black pixel is foreground"),
            ("IMAGE", "Image", "A mask image in this .blend"),
        ],
        default="AUTO",
    )
    mask_path: StringProperty(name="Mask file", subtype="FILE_PATH", default="")
    mask_image: PointerProperty(name="Mask image", type=bpy.types.Image)

    def maps_option(self) -> str:
        """The engine's `maps` option: "auto", or a comma list in the engine's channel order."""
        if self.maps_auto:
            return "auto"
        order = ("BASE", "NORMAL", "ORM", "EMISSIVE")
        return ",".join(m.lower() for m in order if m in self.maps)

    def bake_options(self) -> dict:
        opts = {"faces": int(self.faces), "texture_size": int(self.texture_size), "device": self.device.lower(), "views": int(self.views)}
        maps = self.maps_option()
        if maps != "auto":  # the engine's default is auto; older engines do not know the option
            opts["maps"] = maps
        if self.vertex_colors == "SRGB":  # likewise: only sent when it differs from the engine's default
            opts["vertex_color_interpolation"] = "srgb"
        return opts

    def reconstruct_options(self) -> dict:
        return {"faces": int(self.faces), "texture_size": int(self.texture_size), "device": self.device.lower(), "views": int(self.views)}


classes = (KilnPreferences, KilnSceneSettings)


def register():
    for c in classes:
        bpy.utils.register_class(c)
    bpy.types.Scene.kiln = PointerProperty(type=KilnSceneSettings)
    # For scripts: the last job error (WindowManager properties are not saved in the .blend).
    bpy.types.WindowManager.kiln_error = StringProperty(name="Kiln error", options={"SKIP_SAVE"})
    bpy.types.WindowManager.kiln_error_hint = StringProperty(name="Kiln error hint", options={"SKIP_SAVE"})
    bpy.types.WindowManager.kiln_error_code = StringProperty(name="Kiln error code", options={"SKIP_SAVE"})


def unregister():
    for name in ("kiln_error", "kiln_error_hint", "kiln_error_code"):
        delattr(bpy.types.WindowManager, name)
    del bpy.types.Scene.kiln
    for c in reversed(classes):
        bpy.utils.unregister_class(c)
